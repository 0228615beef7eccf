//! Capabilities the deployment files grant, and whether this machine can grant them: its own
//! bounding set may lack some (CAP_SYS_RESOURCE, here), which no process started here can then hold.

/// The capability number of a name as the deployment files spell it (`bpf`, `NET_ADMIN`...).
pub fn number(cap: &str) -> u32 {
    match cap.to_ascii_lowercase().trim_start_matches("cap_") {
        "net_admin" => 12,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other} is new in the deployment files: add its number here"),
    }
}

/// `caps` split into those this process's bounding set holds and those it lacks.
pub fn grantable(caps: Vec<String>) -> (Vec<String>, Vec<String>) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapBnd");
    caps.into_iter().partition(|c| bounding & (1u64 << number(c)) != 0)
}

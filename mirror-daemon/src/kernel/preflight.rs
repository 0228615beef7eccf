//! Checks made before touching the kernel, so that each common mistake gets a message that says
//! what to do instead of a raw errno from the middle of a load.
use std::path::Path;

use mirror_common::MAX_PORTS;

use super::KernelError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Loading and attaching XDP/TC programs needs CAP_NET_ADMIN plus CAP_BPF (or the older catch-all
/// CAP_SYS_ADMIN). `cap_eff` is the effective capability mask (`CapEff` in /proc/self/status).
pub fn check_capabilities(cap_eff: u64) -> Result<(), KernelError> {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        Ok(())
    } else {
        Err(KernelError::NotPrivileged)
    }
}

/// The effective capabilities of this process.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|status| parse_cap_eff(&status)).unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// Ring buffers arrived in Linux 5.8; BTF must be present (`btf` is /sys/kernel/btf/vmlinux).
pub fn check_kernel(release: &str, btf: &Path) -> Result<(), KernelError> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 8) {
        return Err(KernelError::OldKernel(release.to_string()));
    }
    if !btf.exists() {
        return Err(KernelError::NoBtf(btf.display().to_string()));
    }
    Ok(())
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Ports must be given, at most `MAX_PORTS` of them (0 is rejected by the CLI parser).
pub fn check_ports(ports: &[u16]) -> Result<(), KernelError> {
    match ports.len() {
        0 => Err(KernelError::NoPorts),
        n if n > MAX_PORTS => Err(KernelError::TooManyPorts(n)),
        _ if ports.contains(&0) => Err(KernelError::PortZero),
        _ => Ok(()),
    }
}

/// The kernel wants a ring buffer of a power-of-two number of pages.
pub fn check_ring_size(bytes: u32) -> Result<(), KernelError> {
    if bytes.is_power_of_two() && bytes >= 4096 { Ok(()) } else { Err(KernelError::RingSize(bytes)) }
}

/// The index of a network interface, or a message that says how to list them.
pub fn interface_index(name: &str) -> Result<u32, KernelError> {
    let c = std::ffi::CString::new(name).map_err(|_| KernelError::NoInterface(name.to_string()))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(KernelError::NoInterface(name.to_string())),
        index => Ok(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert!(check_capabilities(u64::MAX).is_ok(), "root");
        assert!(check_capabilities((1 << CAP_NET_ADMIN) | (1 << CAP_BPF)).is_ok());
        assert!(check_capabilities((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)).is_ok());
        assert!(matches!(check_capabilities(1 << CAP_BPF), Err(KernelError::NotPrivileged)));
        assert!(matches!(check_capabilities(0), Err(KernelError::NotPrivileged)));
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn kernel_versions() {
        let here = Path::new("/");
        assert!(check_kernel("6.18.44-fc-v595", here).is_ok());
        assert!(check_kernel("5.8.0", here).is_ok());
        assert!(matches!(check_kernel("5.4.0-150-generic", here), Err(KernelError::OldKernel(_))));
        assert!(matches!(check_kernel("4.19.0", here), Err(KernelError::OldKernel(_))));
        let missing = Path::new("/nonexistent/btf/vmlinux");
        let err = check_kernel("6.1.0", missing).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn ports_and_ring() {
        assert!(matches!(check_ports(&[]), Err(KernelError::NoPorts)));
        assert!(check_ports(&[8080]).is_ok());
        assert!(matches!(check_ports(&[0]), Err(KernelError::PortZero)));
        let many: Vec<u16> = (1..=65).collect();
        assert!(matches!(check_ports(&many), Err(KernelError::TooManyPorts(65))));
        assert!(check_ring_size(1 << 20).is_ok());
        assert!(check_ring_size(3 << 20).is_err());
        assert!(check_ring_size(1024).is_err());
    }

    #[test]
    fn missing_interface_names_the_fix() {
        let err = interface_index("nosuchif9").unwrap_err();
        assert!(err.to_string().contains("ip link"), "{err}");
        assert!(interface_index("lo").is_ok());
    }
}

//! One gate for tests that need root: they skip on a developer's unprivileged `cargo test`, and fail
//! instead when `MIRROR_REQUIRE_KERNEL_TESTS=1` (set by `cargo xtask test` and therefore in CI).

/// Returns true when the test may run; false (after saying why) when it must skip.
pub fn kernel_tests_allowed(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("MIRROR_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: kernel tests are required here but this process is not root");
    }
    eprintln!("skipping {test}: needs root (run `cargo xtask test` as root)");
    false
}

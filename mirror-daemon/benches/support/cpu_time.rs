//! The benchmark thread's own CPU time: benchmarks measure it, not wall time, so that other work on
//! a shared machine does not count against what is measured.
use std::time::Duration;

/// CPU time used by this thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Runs `f` `iters` times and returns the CPU time it took.
#[allow(dead_code, reason = "not every benchmark times whole batches")]
pub fn cpu_time_of(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..iters {
        f();
    }
    thread_cpu_time().saturating_sub(start)
}

//! Process helpers: `fork`, parent-death signal, process identity (pid plus start time, so a
//! reused pid is never mistaken for a live peer), monotonic time in milliseconds, and the
//! heap's retention of freed memory ([`return_large_frees`]).

use nix::unistd::{ForkResult, Pid};
use std::sync::atomic::{AtomicU64, Ordering};

/// Identity of a process: a pid alone is reused by the kernel, pid plus start time is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl ProcId {
    /// This process's identity, read from /proc once per process (a forked child reads
    /// its own: the cached value is keyed by pid).
    pub fn current() -> ProcId {
        static CURRENT: AtomicU64 = AtomicU64::new(0);
        static START: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        if CURRENT.load(Ordering::Acquire) == u64::from(pid) {
            return ProcId {
                pid,
                start: START.load(Ordering::Relaxed),
            };
        }
        let me = ProcId {
            pid,
            start: start_time(pid).unwrap_or(0),
        };
        START.store(me.start, Ordering::Relaxed);
        // ORDERING: Release publishes START before the pid that says it is valid.
        CURRENT.store(u64::from(pid), Ordering::Release);
        me
    }

    /// True while this very process (same pid and same start time) exists and is not a zombie.
    pub fn alive(&self) -> bool {
        self.pid != 0
            && proc_state(self.pid)
                .is_some_and(|(state, start)| state != 'Z' && start == self.start)
    }
}

fn proc_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3; field 22 is the 20th from here (index 19).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Start time of `pid` in clock ticks since boot, or `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_state(pid).map(|(_, s)| s)
}

/// Forks the calling process.
///
/// Callers must be single-threaded when they call it: the proxy master is (signals arrive
/// through `signal_hook::flag`, it starts no helper thread, pool or HTTP agent), so the child
/// may run ordinary code, allocate and take locks.
pub fn fork_single_threaded() -> nix::Result<ForkResult> {
    debug_assert!(
        thread_count().is_none_or(|n| n == 1),
        "fork with threads alive"
    );
    // SAFETY: the only documented hazard of `fork` is a multi-threaded parent whose other
    // threads may hold locks (malloc, stdio) that the child then inherits locked. Our callers
    // are single-threaded (checked above in debug builds), so no lock can be held elsewhere.
    unsafe { nix::unistd::fork() }
}

fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// Asks the kernel to send `SIGTERM` to this process when its parent dies, then checks
/// the parent is still the expected one (it may have died before the call).
pub fn die_with_parent(expected_parent: Pid) -> bool {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number by value and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
    rc == 0 && nix::unistd::getppid() == expected_parent
}

/// Milliseconds of `CLOCK_MONOTONIC`, comparable across processes of one boot.
pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000
}

/// Most bytes of one allocation served from the heap; larger ones are mapped on their own and
/// unmapped when freed.
const MMAP_THRESHOLD: i32 = 128 << 10;

/// Makes freed large buffers go back to the system at once: glibc raises its mmap threshold
/// each time a mapped chunk is freed (up to 32 MiB), after which bodies of up to that size come
/// from the per-thread heaps and stay resident when freed — measured in `cached` with 64 threads
/// after storing 170 MiB: 43 MiB of anonymous memory for 2 MiB of live heads. A fixed threshold
/// (which also turns off the raising) keeps the large buffers mapped on their own. Returns
/// whether the setting took (other C libraries: `false`, nothing changed).
pub fn return_large_frees() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; it is called at start-up,
        // before any thread is spawned, and takes plain integers.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = MMAP_THRESHOLD;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcId::current();
        assert!(me.start > 0);
        assert!(me.alive());
        assert!(!ProcId {
            pid: me.pid,
            start: me.start + 1
        }
        .alive());
        assert!(!ProcId { pid: 0, start: 0 }.alive());
    }
}

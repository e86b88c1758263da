//! Process-shared POSIX semaphores stored inside shared memory, with waits bounded against
//! `CLOCK_MONOTONIC` (`sem_clockwait`, glibc ≥ 2.30), so a wall-clock step cannot stretch or
//! cut a wait.

use crate::shm::ShmSafe;
use std::cell::UnsafeCell;
use std::time::Duration;

extern "C" {
    // glibc ≥ 2.30; the libc crate does not export it for Linux.
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// A counting semaphore living in a mapped region. The region's creator (or the current
/// holder of a segment, see `pool`) initialises it with [`SharedSem::init`] before use.
#[repr(C, align(8))]
pub struct SharedSem(UnsafeCell<libc::sem_t>);

// SAFETY: a sem_t is designed to be shared between processes (pshared = 1); all access
// goes through the libc semaphore calls, which synchronise internally. repr(C), align 8.
unsafe impl ShmSafe for SharedSem {}
// SAFETY: as above: sem_* functions are thread-safe on an initialised semaphore.
unsafe impl Sync for SharedSem {}

#[derive(Debug)]
pub struct SemError(pub nix::Error);

impl std::fmt::Display for SemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "semaphore: {}", self.0)
    }
}

impl std::error::Error for SemError {}

impl SharedSem {
    /// (Re)initialises the semaphore to `value`, shared between processes.
    ///
    /// Callers guarantee that no process waits on or posts this semaphore meanwhile (the pool
    /// re-inits a segment's semaphores only while it holds the segment alone).
    pub fn init(&self, value: u32) {
        // SAFETY: `self.0` points into a live mapping, is aligned, and by the caller's
        // guarantee nobody else uses it during the call; pshared = 1 because the mapping is
        // MAP_SHARED between processes.
        let rc = unsafe { libc::sem_init(self.0.get(), 1, value) };
        assert_eq!(rc, 0, "sem_init: {}", nix::Error::last());
    }

    pub fn post(&self) {
        // SAFETY: the semaphore was initialised before the region or segment was published.
        // sem_post only fails with EOVERFLOW (value at SEM_VALUE_MAX), which our protocol's
        // bounded counts cannot reach; EINVAL would mean an uninitialised semaphore.
        unsafe { libc::sem_post(self.0.get()) };
    }

    /// Takes one unit without waiting; `true` if one was available.
    pub fn try_wait(&self) -> bool {
        loop {
            // SAFETY: initialised semaphore in a live mapping (see `post`).
            if unsafe { libc::sem_trywait(self.0.get()) } == 0 {
                return true;
            }
            if nix::Error::last() != nix::Error::EINTR {
                return false;
            }
        }
    }

    /// `Ok(true)` = acquired, `Ok(false)` = timed out. Retries EINTR; never waits past `timeout`.
    pub fn wait_for(&self, timeout: Duration) -> Result<bool, SemError> {
        let now =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(SemError)?;
        let total_ns = now.tv_nsec() as u64 + timeout.subsec_nanos() as u64;
        let deadline = libc::timespec {
            // Saturating: a huge timeout waits "forever", never wraps into the past.
            tv_sec: now
                .tv_sec()
                .saturating_add(
                    libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
                )
                .saturating_add((total_ns / 1_000_000_000) as libc::time_t),
            tv_nsec: (total_ns % 1_000_000_000) as libc::c_long,
        };
        loop {
            // SAFETY: initialised semaphore in a live mapping (see `post`); `deadline` is a
            // valid timespec on our stack for the duration of the call.
            let rc = unsafe { sem_clockwait(self.0.get(), libc::CLOCK_MONOTONIC, &deadline) };
            if rc == 0 {
                return Ok(true);
            }
            match nix::Error::last() {
                nix::Error::EINTR => continue,
                nix::Error::ETIMEDOUT => return Ok(false),
                e => return Err(SemError(e)),
            }
        }
    }

    /// Current value (for diagnostics and tests only: it may change right after).
    pub fn value(&self) -> i32 {
        let mut v: libc::c_int = 0;
        // SAFETY: initialised semaphore in a live mapping; `v` is a valid out pointer.
        unsafe { libc::sem_getvalue(self.0.get(), &mut v) };
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::ShmRegion;
    use std::time::Instant;

    #[test]
    fn timed_wait_times_out_and_posts_are_counted() {
        let name = format!("/shmtest-{}-sem", std::process::id());
        let r = ShmRegion::create(&name, 4096, 1, 1).unwrap();
        let s: &SharedSem = r.get(64);
        s.init(0);
        let t = Instant::now();
        assert!(!s.wait_for(Duration::from_millis(50)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(50));
        s.post();
        s.post();
        assert_eq!(s.value(), 2);
        assert!(s.wait_for(Duration::from_secs(1)).unwrap());
        assert!(s.try_wait());
        assert!(!s.try_wait());
    }

    #[test]
    fn a_post_from_another_thread_wakes_the_waiter() {
        let name = format!("/shmtest-{}-sem2", std::process::id());
        let r = ShmRegion::create(&name, 4096, 1, 1).unwrap();
        let s: &SharedSem = r.get(64);
        s.init(0);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                s.post();
            });
            assert!(s.wait_for(Duration::from_secs(5)).unwrap());
        });
    }
}

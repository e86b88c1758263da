//! The doorbell queue (`/<instance>.req`), behind a small wrapper so the crate under it can
//! change. `cached` creates and reads it; workers open it and send.
//!
//! Waits are bounded against `CLOCK_MONOTONIC`: the descriptor is non-blocking and we
//! `poll(2)` it (on Linux an mqd_t is a file descriptor), because `mq_timedsend` and
//! `mq_timedreceive` take wall-clock deadlines that a clock step would break.

use crate::protocol::MSG_SIZE;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use posixmq::PosixMq;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Messages the queue holds. Linux caps it at `fs.mqueue.msg_max` (10 by default) without
/// CAP_SYS_RESOURCE; with 64-byte messages a queue costs ~1 KiB of `RLIMIT_MSGQUEUE`.
pub const DEFAULT_CAPACITY: usize = 10;

pub struct Doorbells {
    mq: PosixMq,
    name: String,
    owner: bool,
}

/// The kernel's limits, read at start-up so a config asking for more is reported clearly.
pub fn kernel_msg_max() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Doorbells {
    /// `cached`: creates the queue, removing a stale one of the same name first (a queue
    /// left by a crashed run cannot be listed where /dev/mqueue is not mounted).
    pub fn create(name: &str, capacity: usize) -> io::Result<Doorbells> {
        let _ = posixmq::remove_queue(name);
        let mq = posixmq::OpenOptions::readwrite()
            .mode(0o600)
            .max_msg_len(MSG_SIZE)
            .capacity(capacity)
            .nonblocking()
            .create_new()
            .open(name)?;
        Ok(Doorbells {
            mq,
            name: name.to_string(),
            owner: true,
        })
    }

    /// Worker: opens the existing queue for sending.
    pub fn open(name: &str) -> io::Result<Doorbells> {
        let mq = posixmq::OpenOptions::writeonly()
            .nonblocking()
            .existing()
            .open(name)?;
        Ok(Doorbells {
            mq,
            name: name.to_string(),
            owner: false,
        })
    }

    fn wait(&self, flags: PollFlags, deadline: Instant) -> io::Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: on Linux a message queue descriptor is a file descriptor, and it stays open
        // while `self.mq` lives, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.mq.as_raw_fd()) };
        // Rounded up: rounding down would end the wait early and spin on poll(…, 0).
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(fd, flags)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => Ok(n > 0),
            Err(nix::Error::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one message, waiting at most `timeout` for room.
    pub fn send(&self, msg: &[u8], timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.mq.send(0, msg) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request queue full",
                        ));
                    }
                    self.wait(PollFlags::POLLOUT, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one message into `buf`, waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn recv(&self, buf: &mut [u8; MSG_SIZE], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.mq.recv(buf) {
                Ok((_, n)) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    self.wait(PollFlags::POLLIN, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Doorbells {
    fn drop(&mut self) {
        if self.owner {
            let _ = posixmq::remove_queue(&self.name);
        }
    }
}

/// Removes the queue by name (an owner that exits unlinks it; tests clean up with it).
pub fn remove(name: &str) -> bool {
    posixmq::remove_queue(name).is_ok()
}

/// True if a queue of that name exists.
#[cfg(test)]
fn exists(name: &str) -> bool {
    posixmq::OpenOptions::readonly()
        .existing()
        .nonblocking()
        .open(name)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_receive_and_bounded_waits() {
        let name = format!("/mqtest-{}", std::process::id());
        let q = Doorbells::create(&name, 2).unwrap();
        let w = Doorbells::open(&name).unwrap();
        let mut buf = [0u8; MSG_SIZE];
        assert_eq!(q.recv(&mut buf, Duration::from_millis(20)).unwrap(), None);
        w.send(b"one", Duration::from_millis(10)).unwrap();
        w.send(b"two", Duration::from_millis(10)).unwrap();
        let t = Instant::now();
        let full = w.send(b"three", Duration::from_millis(50)).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            q.recv(&mut buf, Duration::from_millis(10)).unwrap(),
            Some(3)
        );
        assert_eq!(&buf[..3], b"one");
        drop(q);
        assert!(!exists(&name));
    }
}

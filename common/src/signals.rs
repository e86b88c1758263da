//! Signal dispositions of both daemons, installed by [`Signals::install`] before the daemon
//! creates any IPC object (a signal that arrives earlier kills a process that owns nothing).
//!
//! | signal | effect |
//! |---|---|
//! | SIGTERM, SIGINT, SIGQUIT | graceful stop (`stop`); the daemon unlinks what it owns |
//! | SIGHUP | `reload`: re-read the configuration |
//! | SIGUSR1 | `reopen`: reopen the log files |
//! | SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGXCPU, SIGXFSZ, SIGPWR, SIGSTKFLT, SIGIO, SIGRTMIN…SIGRTMAX | logged and ignored ([`Signals::log_ignored`]); a write past `RLIMIT_FSIZE` then fails with `EFBIG` instead of killing |
//! | SIGPIPE | ignored silently (`SIG_IGN`, as the Rust runtime sets it before `main`): a closed peer is an `EPIPE` where it is written to |
//! | SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS | default: a crash stays a crash (core dump), never a silent carry-on |
//!
//! Handlers only set an `AtomicBool` (`signal_hook::flag`); the daemon's loop reads the flags.
//! No thread is started, so the proxy master stays single-threaded and may `fork`; a forked
//! child inherits the handlers with its own copy of the flags, which nobody reads there, so a
//! signal sent to a worker never acts on its master.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Signals that would kill by default and mean nothing to shmproxy: logged, then ignored.
fn ignored() -> Vec<i32> {
    let mut v = vec![
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGPWR,
        libc::SIGSTKFLT,
        libc::SIGIO,
    ];
    v.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    v
}

/// Name of a signal number for log lines (`SIGUSR2`, `SIGRTMIN+3`).
pub fn name(sig: i32) -> String {
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// The flags the handlers set.
pub struct Signals {
    /// SIGTERM, SIGINT or SIGQUIT arrived: stop gracefully. Shared with threads that watch it.
    pub stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    ignored: Vec<(i32, Arc<AtomicBool>)>,
}

impl Signals {
    /// Installs the handlers of the table above.
    pub fn install() -> std::io::Result<Signals> {
        let s = Signals::unregistered();
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
            signal_hook::flag::register(sig, s.stop.clone())?;
        }
        signal_hook::flag::register(libc::SIGHUP, s.reload.clone())?;
        signal_hook::flag::register(libc::SIGUSR1, s.reopen.clone())?;
        s.register_ignored()?;
        Ok(s)
    }

    fn unregistered() -> Signals {
        Signals {
            stop: Arc::default(),
            reload: Arc::default(),
            reopen: Arc::default(),
            ignored: ignored().into_iter().map(|n| (n, Arc::default())).collect(),
        }
    }

    fn register_ignored(&self) -> std::io::Result<()> {
        for (sig, flag) in &self.ignored {
            signal_hook::flag::register(*sig, flag.clone())?;
        }
        Ok(())
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether SIGHUP arrived since the last call.
    pub fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::Relaxed)
    }

    /// Whether SIGUSR1 arrived since the last call.
    pub fn take_reopen(&self) -> bool {
        self.reopen.swap(false, Ordering::Relaxed)
    }

    /// Logs each ignored signal that arrived since the last call (several of one kind make
    /// one line); returns how many kinds arrived.
    pub fn log_ignored(&self) -> usize {
        let mut n = 0;
        for (sig, flag) in &self.ignored {
            if flag.swap(false, Ordering::Relaxed) {
                log::warn!("{}: ignored", name(*sig));
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_ignored_set() {
        assert_eq!(name(libc::SIGUSR2), "SIGUSR2");
        assert_eq!(name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        let set = ignored();
        for crash in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGABRT,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            assert!(
                !set.contains(&crash),
                "{} must keep its default",
                name(crash)
            );
        }
        for handled in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            assert!(!set.contains(&handled));
        }
        assert!(set.contains(&libc::SIGUSR2) && set.contains(&libc::SIGRTMAX()));
    }

    /// The handlers work: SIGUSR2 and a real-time signal raised in this (test) process are
    /// caught and reported once, not delivered with their default action (which would end the
    /// test run). Only the ignored set is registered, so Ctrl-C still stops `cargo test`.
    #[test]
    fn ignored_signals_are_caught_and_reported_once() {
        let s = Signals::unregistered();
        s.register_ignored().unwrap();
        for sig in [libc::SIGUSR2, libc::SIGRTMIN() + 1] {
            // SAFETY: raise(3) takes a signal number by value and touches no memory of ours;
            // the handler registered above only stores to an atomic.
            assert_eq!(unsafe { libc::raise(sig) }, 0);
        }
        assert_eq!(s.log_ignored(), 2);
        assert_eq!(s.log_ignored(), 0);
    }
}

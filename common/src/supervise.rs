//! Supervision of long-lived threads: hostile input costs one request, never a thread.
//!
//! [`contain`] runs one unit of work (a request, a connection's turn) and turns a panic in it
//! into `None`: whatever the unit held is dropped on the way out (a segment lease aborts and
//! is released or quarantined, a fill is marked failed, a connection is closed) and the thread
//! goes on with the next unit. [`supervised`] runs a thread's whole loop and starts it afresh
//! whenever it panics anyway, so a pool of threads never silently shrinks. Both log the panic;
//! the caller counts it (`request_panics`, `threads_restarted`).
//!
//! Every lock shared between threads is taken with `unwrap_or_else(|e| e.into_inner())`, so a
//! panic while one was held never poisons the others.
//!
//! Tests only: a debug build panics on purpose for a request whose target is the value of
//! `SHMPROXY_TEST_PANIC` (see [`test_panic`]); release builds have no such hook.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

/// The text of a panic payload.
pub fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs `f`; a panic in it is logged (naming `what`) and becomes `None`.
pub fn contain<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(e) => {
            log::error!("{what} panicked: {}; only it is lost", message(&*e));
            None
        }
    }
}

/// Runs the thread loop `body` until it returns; each time it panics instead, logs it,
/// calls `restarted` and runs `body` again from scratch (its state unwound), after a short
/// pause that grows while the restarts come back to back.
pub fn supervised(name: &str, mut restarted: impl FnMut(), mut body: impl FnMut()) {
    let mut pause = Duration::from_millis(10);
    loop {
        match panic::catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(e) => {
                log::error!("thread {name} panicked: {}; restarting it", message(&*e));
                restarted();
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Debug builds, tests only: panics if `target` is the value of `SHMPROXY_TEST_PANIC` plus
/// `suffix` (each daemon has its own suffix, so a test picks which one panics). Release
/// builds compile this to nothing.
pub fn test_panic(target: &str, suffix: &str) {
    if cfg!(debug_assertions) {
        static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let want = WANT.get_or_init(|| {
            std::env::var("SHMPROXY_TEST_PANIC")
                .ok()
                .filter(|v| !v.is_empty())
        });
        if let Some(want) = want {
            if target.strip_prefix(want.as_str()) == Some(suffix) {
                panic!("test panic for {target} (SHMPROXY_TEST_PANIC)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_contained_panic_is_none_and_a_supervised_loop_restarts() {
        assert_eq!(contain("ok", || 3), Some(3));
        assert_eq!(contain("boom", || -> u8 { panic!("boom") }), None);
        let runs = Cell::new(0);
        let restarts = Cell::new(0);
        supervised(
            "t",
            || restarts.set(restarts.get() + 1),
            || {
                runs.set(runs.get() + 1);
                if runs.get() < 3 {
                    panic!("again");
                }
            },
        );
        assert_eq!((runs.get(), restarts.get()), (3, 2));
    }
}

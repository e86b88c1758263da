//! Readiness notifications to systemd (`Type=notify` units in `contrib/`), through the
//! `sd-notify` crate. Without `NOTIFY_SOCKET` (not started by systemd) each call does nothing.
//!
//! Called by the proxy master and by `cached`, never by a worker. A call sends one datagram
//! and starts no thread, so the master stays single-threaded. A failed send is logged at debug
//! level only: readiness is advisory, serving goes on.

use sd_notify::NotifyState;

fn send(what: &str, states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        log::debug!("sd_notify {what}: {e}");
    }
}

/// The daemon serves: `READY=1` (also ends a reload).
pub fn ready(status: &str) {
    send("READY", &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP reload starts: `RELOADING=1` with the monotonic time systemd asks for; end it
/// with [`ready`].
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    send("RELOADING", &states);
}

/// A graceful stop starts: `STOPPING=1`.
pub fn stopping() {
    send("STOPPING", &[NotifyState::Stopping]);
}

//! The worker's one error type, [`FetchError`]: every way a request can fail between the
//! client and cached, and the one function ([`FetchError::count`]) that turns a failure
//! into its counter and the status the client is told (pingora's `ErrorSource` and
//! `HTTPStatus`). Nothing here writes to a socket; `route` applies the answer.

use super::conn::ClientError;
use common::request::RejectReason;
use common::stats::Counters;
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum FetchError {
    /// The request is refused before it is forwarded (`bad_requests` and its reason).
    Rejected(RejectReason),
    /// The request's `Via` already names this node: it has come back round a loop of caches.
    Loop,
    /// cached is not running.
    CachedAbsent,
    /// No free segment within `pool_wait`.
    PoolTimeout,
    /// The doorbell could not be rung (queue full or gone).
    RingFailed(io::Error),
    /// cached did not move within `cached_timeout`.
    CachedTimeout,
    /// cached's answer (its head or a chunk) failed validation.
    BadAnswer(String),
    /// cached aborted the transfer or died.
    CachedGone(io::Error),
    /// cached's body ended before the length its head announced.
    ShortBody,
    /// The client failed: sending its body, or taking the answer.
    Client(ClientError),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Rejected(why) => {
                write!(f, "rejected ({}): {}", why.status(), why.message())
            }
            FetchError::Loop => f.write_str("loop: the request's Via names this node"),
            FetchError::CachedAbsent => f.write_str("cached is not running"),
            FetchError::PoolTimeout => f.write_str("no free segment in time"),
            FetchError::RingFailed(e) => write!(f, "ringing cached: {e}"),
            FetchError::CachedTimeout => f.write_str("cached did not answer in time"),
            FetchError::BadAnswer(e) => write!(f, "invalid answer from cached: {e}"),
            FetchError::CachedGone(e) => write!(f, "cached went away: {e}"),
            FetchError::ShortBody => f.write_str("body length differs from Content-Length"),
            FetchError::Client(e) => e.fmt(f),
        }
    }
}

impl From<ClientError> for FetchError {
    fn from(e: ClientError) -> FetchError {
        FetchError::Client(e)
    }
}

impl FetchError {
    /// A failure of the segment transfer as `common::pool::Lease` reports it (its I/O
    /// errors carry the kind: `TimedOut` for a peer that did not move in time,
    /// `InvalidData` for a chunk that failed validation, anything else an aborted transfer).
    pub fn from_lease(e: io::Error) -> FetchError {
        match e.kind() {
            io::ErrorKind::TimedOut => FetchError::CachedTimeout,
            io::ErrorKind::InvalidData => FetchError::BadAnswer(e.to_string()),
            _ => FetchError::CachedGone(e),
        }
    }

    /// Counts the failure and returns what the client is told if nothing was answered yet
    /// (`None`: the connection just closes). The one place where a failure gets its
    /// status and its counter.
    pub fn count(&self, c: &Counters) -> Option<(u16, &'static str)> {
        let (counter, answer) = match self {
            FetchError::Rejected(why) => return Some(reject(c, *why)),
            FetchError::Loop => (
                Some(&c.loops_refused),
                Some((
                    508,
                    "this request has already passed this node (its Via names it): a loop of caches",
                )),
            ),
            FetchError::CachedAbsent => (
                Some(&c.cached_unavailable),
                Some((503, "cached is not running; retry shortly")),
            ),
            FetchError::PoolTimeout => (
                Some(&c.pool_acquire_timeouts),
                Some((503, "no free shared-memory segment in time")),
            ),
            FetchError::RingFailed(_) => (
                Some(&c.cached_unavailable),
                Some((503, "cached is not answering; retry shortly")),
            ),
            FetchError::CachedTimeout => (
                Some(&c.cached_timeouts),
                Some((504, "cached did not answer in time")),
            ),
            FetchError::BadAnswer(_) => (
                Some(&c.messages_rejected),
                Some((502, "invalid answer from cached")),
            ),
            FetchError::CachedGone(_) => (None, Some((503, "cached went away; retry shortly"))),
            FetchError::ShortBody => (None, None),
            // Slow and Crowded were counted where the wait was refused.
            FetchError::Client(ClientError::Slow) => {
                (None, Some((408, "request body not received in time")))
            }
            FetchError::Client(ClientError::Crowded) => {
                (None, Some((503, "too many slow clients; retry shortly")))
            }
            FetchError::Client(ClientError::TimedOut) => (Some(&c.timeouts_send), None),
            FetchError::Client(ClientError::BodyTooLarge) => {
                return Some(reject(c, RejectReason::BodyTooLarge))
            }
            FetchError::Client(ClientError::BadChunk(_)) => {
                return Some(reject(c, RejectReason::MalformedBody))
            }
            FetchError::Client(ClientError::Closed | ClientError::Io(_)) => (None, None),
        };
        if let Some(counter) = counter {
            Counters::inc(counter);
        }
        answer
    }

    /// May the connection serve another request after this failure was answered? Only when
    /// nothing reached cached (and, as after any answer, the request's body was read).
    pub fn keeps_connection(&self) -> bool {
        matches!(self, FetchError::CachedAbsent | FetchError::PoolTimeout)
    }
}

/// A refused request: counted by its reason, answered with the status and text the reason
/// maps to (`RejectReason::verdict`).
fn reject(c: &Counters, why: RejectReason) -> (u16, &'static str) {
    c.rejected(why);
    (why.status(), why.message())
}

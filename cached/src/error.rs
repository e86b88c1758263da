//! What a source can fail with (`SourceError`), and the one function that turns such a
//! failure into the status and text the client gets and the counters it moves. The sources
//! (`source::disk`, `source::origin`, `upstream`) only build these values; `serve` and the
//! modules it calls answer them through [`SourceError::answer`]. Nothing here reads an
//! error's message to classify it: each variant is built where its cause is known.

use common::stats::Counters;
use std::fmt;

#[derive(Debug)]
pub enum SourceError {
    /// No connection to the origin (refused, unreachable, no such host, connect timeout).
    Connect(String),
    /// The TLS handshake or the certificate check failed.
    Tls(String),
    /// The connection failed before any answer byte (reset, closed).
    Io(String),
    /// The origin took longer than the read timeout.
    Timeout(String),
    /// The origin's answer could not be read as HTTP, or the request could not be built.
    Protocol(String),
    /// The origin answered with framing that cannot be relayed exactly (RFC 9112 §6).
    BadFraming(&'static str),
    /// The origin's body ended early or failed after the head was relayed.
    Truncated(String),
    /// The target's percent-encoding is invalid.
    BadPath,
    /// The target names something outside what may be served (`..`, an encoded `/`, NUL,
    /// a file the daemon may not read).
    Forbidden,
    /// Nothing to serve under the document root (the text says what is missing).
    NotFound(&'static str),
    /// A file changed while it was read: its body disagrees with the length announced.
    FileChanged,
}

impl SourceError {
    /// The one mapping of a failure to an answer: counts it in `c` and returns the status
    /// and the short text the client reads. A failure after the head went out (`Truncated`)
    /// is counted the same way; the caller then aborts the transfer instead of answering.
    pub fn answer(&self, c: &Counters) -> (u16, &'static str) {
        match self {
            SourceError::Timeout(_) => {
                Counters::inc(&c.upstream_timeouts);
                (504, "the origin did not answer in time")
            }
            SourceError::Connect(_)
            | SourceError::Tls(_)
            | SourceError::Io(_)
            | SourceError::Protocol(_) => {
                Counters::inc(&c.upstream_errors);
                (502, "the origin could not be reached or answered badly")
            }
            SourceError::BadFraming(_) => {
                Counters::inc(&c.upstream_bad_framing);
                Counters::inc(&c.upstream_errors);
                (
                    502,
                    "the origin answered with framing that cannot be relayed",
                )
            }
            SourceError::Truncated(_) => {
                Counters::inc(&c.upstream_errors);
                (502, "the origin's answer was cut short")
            }
            SourceError::BadPath => (400, "bad percent-encoding in path"),
            SourceError::Forbidden => (403, "path not allowed"),
            SourceError::NotFound(what) => (404, what),
            SourceError::FileChanged => (503, "file changed while being read; retry"),
        }
    }

    /// A failure of the origin (for `stale-if-error`, RFC 5861 §4, and `grace`): it could
    /// not be reached, or failed to answer in time or readably. Framing we refuse to relay
    /// is not one: that origin did answer, and the answer is refused, not replaced.
    pub fn origin_failed(&self) -> bool {
        matches!(
            self,
            SourceError::Connect(_)
                | SourceError::Tls(_)
                | SourceError::Io(_)
                | SourceError::Timeout(_)
                | SourceError::Protocol(_)
        )
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Connect(s) => write!(f, "cannot connect: {s}"),
            SourceError::Tls(s) => write!(f, "TLS: {s}"),
            SourceError::Io(s) => write!(f, "connection failed: {s}"),
            SourceError::Timeout(s) => write!(f, "timed out: {s}"),
            SourceError::Protocol(s) => write!(f, "bad answer: {s}"),
            SourceError::BadFraming(why) => write!(f, "framing refused: {why}"),
            SourceError::Truncated(s) => write!(f, "answer cut short: {s}"),
            SourceError::BadPath => f.write_str("bad percent-encoding in path"),
            SourceError::Forbidden => f.write_str("path not allowed"),
            SourceError::NotFound(what) => f.write_str(what),
            SourceError::FileChanged => f.write_str("file changed while being read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::stats::StatsRegion;
    use std::sync::atomic::Ordering;

    #[test]
    fn each_failure_has_one_status_and_counter() {
        // A region of our own (its creator unlinks it on drop).
        let name = format!("/t{}-source-error.stats", std::process::id());
        let region = StatsRegion::create(&name, 1).unwrap();
        let c = region.slot(0);
        assert_eq!(SourceError::Timeout(String::new()).answer(c).0, 504);
        assert_eq!(c.upstream_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(SourceError::Tls(String::new()).answer(c).0, 502);
        assert_eq!(SourceError::BadFraming("x").answer(c).0, 502);
        assert_eq!(c.upstream_errors.load(Ordering::Relaxed), 2);
        assert_eq!(c.upstream_bad_framing.load(Ordering::Relaxed), 1);
        assert_eq!(
            SourceError::NotFound("no such file").answer(c),
            (404, "no such file")
        );
        assert_eq!(SourceError::Forbidden.answer(c).0, 403);
        assert_eq!(SourceError::FileChanged.answer(c).0, 503);
        assert_eq!(
            c.upstream_errors.load(Ordering::Relaxed),
            2,
            "disk errors are not upstream's"
        );
        assert!(SourceError::Io(String::new()).origin_failed());
        assert!(!SourceError::BadFraming("x").origin_failed());
    }
}

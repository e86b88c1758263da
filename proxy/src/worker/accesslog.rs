//! The access log: one line per request in Combined Log Format plus cache outcome,
//! upstream status and duration. (Writing, buffering and rotation: see issue 5.)

use super::conn::Conn;
use super::parse::Request;
use super::Worker;
use std::time::Duration;

/// Records one answered request.
pub fn record(w: &Worker, conn: &Conn, req: &Request, took: Duration) {
    log::trace!(
        "{} \"{} {} HTTP/1.{}\" {} {} {} {}us worker {}",
        conn.peer,
        req.method,
        req.target,
        req.version % 10,
        conn.reply.status,
        conn.reply.bytes,
        conn.reply.outcome.as_str(),
        took.as_micros(),
        w.index
    );
}

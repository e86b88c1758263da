//! The fields that name this node in every answer head the proxy writes: `Via` (RFC 9110
//! §7.6.3), `X-Served-By`, `X-Cache` and this cache's `Cache-Status` member (RFC 9211), after
//! the members of the caches nearer the origin (a shield's); and the loop guard that refuses
//! a request whose `Via` already names this node. Writes no bytes to a client itself.

use super::conn::Conn;
use super::Worker;
use common::http::CacheOutcome;
use common::node;
use common::request::Request;
use common::stats::Counters;
use std::fmt::Write as _;

/// The node's fields of an answer with `outcome`, each line ending in CRLF. `upstream`: the
/// `Cache-Status` members of the caches nearer the origin (empty: none); `detail`: appended
/// to this cache's member (`; detail=l1`), or "".
pub fn fields(
    w: &Worker,
    outcome: CacheOutcome,
    method: &str,
    fwd_status: u16,
    ttl: Option<u64>,
    detail: &str,
    upstream: &[u8],
) -> String {
    let name = &w.shared.cfg.node;
    let mut out = String::with_capacity(160);
    let _ = write!(
        out,
        "Via: {}\r\nX-Served-By: {name}\r\nX-Cache: {}\r\nCache-Status: ",
        node::via(11, name),
        outcome.as_str()
    );
    if !upstream.is_empty() {
        out.push_str(&String::from_utf8_lossy(upstream));
        out.push_str(", ");
    }
    let _ = write!(
        out,
        "{}{detail}\r\n",
        outcome.cache_status(&node::cache_name(name), method, fwd_status, ttl)
    );
    out
}

/// Refuses (508, counted) a request whose `Via` already names this node: it has come back
/// round a loop of caches. Returns whether it was refused (the connection then closes).
pub fn refuse_loop(w: &Worker, conn: &mut Conn, req: &Request) -> bool {
    let vias = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("via"))
        .map(|(_, v)| v.as_slice());
    if !node::loop_detected(vias, &w.shared.cfg.node) {
        return false;
    }
    Counters::inc(&w.counters().loops_refused);
    super::conn::send_simple(
        w,
        conn,
        508,
        "this request has already passed this node (its Via names it): a loop of caches",
    );
    true
}

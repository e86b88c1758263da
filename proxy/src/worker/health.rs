//! `GET /__shmproxy/health`, the answer a load balancer's check reads (HAProxy `option httpchk
//! GET /__shmproxy/health`): `200 ok` while this node can serve, `503 <reason>` when it cannot
//! (cached not running, the segment pool exhausted) and while a stopping proxy drains
//! (`proxy.drain_ms`: the master raises the `draining` gauge and keeps serving). Reads state
//! words only; never leases a segment or rings cached.

use super::Worker;
use std::sync::atomic::Ordering;

/// Why this node cannot take new requests now, or `None` when it can.
pub fn unready(w: &Worker) -> Option<&'static str> {
    let shared = w.shared;
    // The master (slot 0) raises it from the start of a graceful stop.
    if shared.stats.slot(0).draining.load(Ordering::Relaxed) != 0 {
        return Some("draining: the node is stopping");
    }
    if w.cached.current().is_none() {
        return Some("cached is not running");
    }
    if shared.pool.free_count() <= 0 {
        return Some("the segment pool is exhausted");
    }
    None
}

/// The status and body of the health answer.
pub fn answer(w: &Worker) -> (u16, String) {
    match unready(w) {
        None => (200, "ok\n".into()),
        Some(why) => (503, format!("{why}\n")),
    }
}

//! `/__shmproxy/stats`: the counters of both daemons and the segment pool, as JSON.
//! Loopback clients only.

use super::conn::{self, Conn};
use super::parse::Request;
use super::Worker;
use common::stats::{Snapshot, StatsRegion, FIELDS};
use std::fmt::Write as _;

pub fn serve(w: &Worker, conn: &mut Conn, req: &Request) -> bool {
    if !conn.peer_is_loopback() {
        conn::send_simple(
            w,
            conn,
            403,
            "statistics are served to loopback clients only",
        );
        return false;
    }
    let path = req.target.split('?').next().unwrap_or("");
    if path != "/__shmproxy/stats" {
        conn::send_simple(w, conn, 404, "no such endpoint");
        return false;
    }
    let body = stats_json(w);
    let head = format!(
        "HTTP/1.1 200 OK\r\nDate: {}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\nX-Cache: INTERNAL\r\n{}\r\n",
        common::http::http_date(std::time::SystemTime::now()),
        body.len(),
        if req.keep_alive { "" } else { "Connection: close\r\n" }
    );
    let mut out = head.into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    w.counters().status(200);
    conn.write_all_timeout(&out, w.shared.cfg.send_timeout)
        .is_ok()
        && req.keep_alive
}

fn counters_json(out: &mut String, s: &Snapshot) {
    out.push('{');
    for (i, f) in FIELDS.iter().enumerate() {
        let _ = write!(
            out,
            "{}\"{}\":{}",
            if i > 0 { "," } else { "" },
            f.name,
            s.values[i] as i64
        );
    }
    let _ = write!(
        out,
        ",\"latency_p50_us\":{},\"latency_p90_us\":{},\"latency_p99_us\":{}}}",
        s.latency_percentile(0.5),
        s.latency_percentile(0.9),
        s.latency_percentile(0.99)
    );
}

pub fn stats_json(w: &Worker) -> String {
    let shared = w.shared;
    let o = shared.pool.occupancy();
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "{{\"instance\":\"{}\",\"pool\":{{\"segments\":{},\"segment_size\":{},\"free\":{},\"in_use\":{},\"quarantined\":{},\"states\":\"",
        shared.cfg.instance,
        o.segments,
        shared.pool.segment_size(),
        o.free,
        o.in_use,
        o.quarantined
    );
    for i in 0..o.segments {
        out.push(match shared.pool.state_of(i) {
            common::pool::SegmentState::Free => '.',
            common::pool::SegmentState::InUse => 'U',
            common::pool::SegmentState::Quarantined => 'Q',
        });
    }
    out.push_str("\"},\"proxy\":");
    counters_json(&mut out, &shared.stats.snapshot());
    out.push_str(",\"workers\":[");
    for i in 1..shared.stats.slots() {
        let s = shared.stats.slot(i);
        let _ = write!(
            out,
            "{}{{\"worker\":{i},\"connections_active\":{},\"requests\":{}}}",
            if i > 1 { "," } else { "" },
            s.connections_active
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
            s.requests.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    out.push_str("],\"cached\":");
    match StatsRegion::open(&shared.names.stats_cached)
        .ok()
        .filter(|r| r.owner().alive())
    {
        Some(r) => {
            counters_json(&mut out, &r.snapshot());
            let _ = write!(out, ",\"cached_pid\":{}", r.owner().pid);
        }
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

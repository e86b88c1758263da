//! The proxy's own endpoints under `/__shmproxy/`, for clients in `stats_allow` (loopback by
//! default): `stats` (JSON of both daemons' counters and the segment pool), `metrics`
//! (Prometheus text exposition 0.0.4), `health` (for a load balancer: [`health`]) and the
//! live dashboard (`/__shmproxy/` or `/__shmproxy/dashboard`, with its two assets), whose
//! files live in `www/dashboard/` and are compiled into the binary. Every answer is counted
//! like any other (status, bytes, outcome `INTERNAL`). Never touches the pool or cached
//! beyond reading their state words and counters.

use super::conn::{Conn, Io};
use super::ctx::Ctx;
use super::respond;
use common::request::Request;
use common::stats::View;
use std::sync::atomic::Ordering;

const DASHBOARD_HTML: &str = include_str!("../../../www/dashboard/index.html");
const DASHBOARD_CSS: &str = include_str!("../../../www/dashboard/dashboard.css");
const DASHBOARD_JS: &str = include_str!("../../../www/dashboard/dashboard.js");

/// Is the client in `stats_allow` (the endpoints here and PURGE)?
pub fn allowed(cx: &Ctx, conn: &Conn) -> bool {
    conn.stream
        .peer_addr()
        .is_ok_and(|a| cx.shared.cfg.stats_allow.iter().any(|n| n.contains(a.ip())))
}

/// Answers a GET or HEAD for `/__shmproxy/…` (its body, if any, was read before); returns
/// whether the connection may continue.
pub fn serve(cx: &Ctx, io: &Io, conn: &mut Conn, req: &Request) -> bool {
    let answer = |conn: &mut Conn, status, content_type, body: &str| {
        respond::internal(io, conn, req, status, content_type, body)
    };
    if !allowed(cx, conn) {
        return answer(
            conn,
            403,
            "text/plain; charset=utf-8",
            "403 Forbidden: /__shmproxy/ is served to the addresses in stats_allow only\n",
        );
    }
    let path = req.target.split('?').next().unwrap_or("");
    match path {
        "/__shmproxy/stats" => {
            let body = view(cx).json();
            answer(conn, 200, "application/json", &body)
        }
        "/__shmproxy/metrics" => {
            let body = view(cx).prometheus();
            answer(conn, 200, "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        "/__shmproxy/health" => {
            let (status, body) = health(cx);
            answer(conn, status, "text/plain; charset=utf-8", &body)
        }
        "/__shmproxy/" | "/__shmproxy/dashboard" => {
            answer(conn, 200, "text/html; charset=utf-8", DASHBOARD_HTML)
        }
        "/__shmproxy/dashboard.css" => answer(conn, 200, "text/css; charset=utf-8", DASHBOARD_CSS),
        "/__shmproxy/dashboard.js" => {
            answer(conn, 200, "text/javascript; charset=utf-8", DASHBOARD_JS)
        }
        _ => answer(
            conn,
            404,
            "text/plain; charset=utf-8",
            "404 Not Found: try /__shmproxy/stats, /__shmproxy/metrics, /__shmproxy/health or /__shmproxy/\n",
        ),
    }
}

/// Both daemons' counters and the pool, read now.
pub fn view(cx: &Ctx) -> View {
    let shared = cx.shared;
    let mut v = View::collect(&shared.names, Some(&shared.stats), Some(&shared.pool));
    v.node = Some(shared.cfg.node.clone());
    v
}

/// The answer a load balancer's check reads (HAProxy `option httpchk GET
/// /__shmproxy/health`): `200 ok` while this node can serve, `503 <reason>` when it cannot
/// (cached not running, the segment pool exhausted) and while a stopping proxy drains
/// (`proxy.drain_ms`: the master raises the `draining` gauge and keeps serving). Reads state
/// words only; never leases a segment or rings cached.
fn health(cx: &Ctx) -> (u16, String) {
    match unready(cx) {
        None => (200, "ok\n".into()),
        Some(why) => (503, format!("{why}\n")),
    }
}

/// Why this node cannot take new requests now, or `None` when it can.
fn unready(cx: &Ctx) -> Option<&'static str> {
    let shared = cx.shared;
    // The master (slot 0) raises it from the start of a graceful stop.
    if shared.stats.slot(0).draining.load(Ordering::Relaxed) != 0 {
        return Some("draining: the node is stopping");
    }
    if cx.cached.current().is_none() {
        return Some("cached is not running");
    }
    if shared.pool.free_count() <= 0 {
        return Some("the segment pool is exhausted");
    }
    None
}

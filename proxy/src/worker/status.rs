//! The proxy's own endpoints under `/__shmproxy/`, for clients in `stats_allow` (loopback by
//! default): `stats` (JSON of both daemons' counters and the segment pool), `metrics`
//! (Prometheus text exposition 0.0.4) and the live dashboard (`/__shmproxy/` or
//! `/__shmproxy/dashboard`, with its two assets), whose files live in `www/dashboard/` and are
//! compiled into the binary. Every answer is counted like any other (status, bytes, outcome
//! `INTERNAL`). Never touches the pool or cached beyond reading their state words and counters.

use super::conn::{Conn, Io};
use super::ctx::Ctx;
use super::respond;
use common::request::Request;
use common::stats::View;

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
            "404 Not Found: try /__shmproxy/stats, /__shmproxy/metrics or /__shmproxy/\n",
        ),
    }
}

/// Both daemons' counters and the pool, read now.
pub fn view(cx: &Ctx) -> View {
    let shared = cx.shared;
    View::collect(&shared.names, Some(&shared.stats), Some(&shared.pool))
}

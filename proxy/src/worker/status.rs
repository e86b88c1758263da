//! The proxy's own endpoints under `/__shmproxy/`, for clients in `stats_allow` (loopback by
//! default): `stats` (JSON of both daemons' counters and the segment pool), `metrics`
//! (Prometheus text exposition 0.0.4), `health` (for a load balancer: [`super::health`]) and
//! the live dashboard (`/__shmproxy/` or
//! `/__shmproxy/dashboard`, with its two assets), whose files live in `www/dashboard/` and are
//! compiled into the binary. Every answer is counted like any other (status, bytes, outcome
//! `INTERNAL`). Never touches the pool or cached beyond reading their state words and counters.

use super::conn::Conn;
use super::Worker;
use common::http::CacheOutcome;
use common::request::Request;
use common::stats::View;

const DASHBOARD_HTML: &str = include_str!("../../../www/dashboard/index.html");
const DASHBOARD_CSS: &str = include_str!("../../../www/dashboard/dashboard.css");
const DASHBOARD_JS: &str = include_str!("../../../www/dashboard/dashboard.js");

/// Answers a GET or HEAD for `/__shmproxy/…`; returns whether the connection may continue.
/// Is the client in `stats_allow` (the endpoints here and PURGE)?
pub fn allowed(w: &Worker, conn: &Conn) -> bool {
    conn.stream
        .peer_addr()
        .is_ok_and(|a| w.shared.cfg.stats_allow.iter().any(|n| n.contains(a.ip())))
}

pub fn serve(w: &Worker, conn: &mut Conn, req: &Request) -> bool {
    if !allowed(w, conn) {
        return answer(
            w,
            conn,
            req,
            403,
            "text/plain; charset=utf-8",
            "403 Forbidden: /__shmproxy/ is served to the addresses in stats_allow only\n",
        );
    }
    let path = req.target.split('?').next().unwrap_or("");
    match path {
        "/__shmproxy/stats" => {
            let body = view(w).json();
            answer(w, conn, req, 200, "application/json", &body)
        }
        "/__shmproxy/metrics" => {
            let body = view(w).prometheus();
            answer(
                w,
                conn,
                req,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
        }
        "/__shmproxy/health" => {
            let (status, body) = super::health::answer(w);
            answer(w, conn, req, status, "text/plain; charset=utf-8", &body)
        }
        "/__shmproxy/" | "/__shmproxy/dashboard" => answer(
            w,
            conn,
            req,
            200,
            "text/html; charset=utf-8",
            DASHBOARD_HTML,
        ),
        "/__shmproxy/dashboard.css" => {
            answer(w, conn, req, 200, "text/css; charset=utf-8", DASHBOARD_CSS)
        }
        "/__shmproxy/dashboard.js" => answer(
            w,
            conn,
            req,
            200,
            "text/javascript; charset=utf-8",
            DASHBOARD_JS,
        ),
        _ => answer(
            w,
            conn,
            req,
            404,
            "text/plain; charset=utf-8",
            "404 Not Found: try /__shmproxy/stats, /__shmproxy/metrics, /__shmproxy/health or /__shmproxy/\n",
        ),
    }
}

/// Both daemons' counters and the pool, read now.
pub fn view(w: &Worker) -> View {
    let shared = w.shared;
    let mut v = View::collect(&shared.names, Some(&shared.stats), Some(&shared.pool));
    v.node = Some(shared.cfg.node.clone());
    v
}

fn answer(
    w: &Worker,
    conn: &mut Conn,
    req: &Request,
    status: u16,
    content_type: &str,
    body: &str,
) -> bool {
    // The body, if any, was read before (`conn::discard_body`).
    let keep = req.keep_alive;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nContent-Length: {}\r\n{}{}\r\n",
        common::http::reason(status),
        common::http::http_date(std::time::SystemTime::now()),
        body.len(),
        super::tier::fields(w, CacheOutcome::Internal, &req.method, 0, None, "", b""),
        match (req.version, keep) {
            (10, true) => "Connection: keep-alive\r\n",
            (_, false) => "Connection: close\r\n",
            _ => "",
        }
    )
    .into_bytes();
    let head_len = out.len() as u64;
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    conn.answered(w, status, CacheOutcome::Internal);
    conn.reply.head_bytes = head_len;
    conn.send(w, &out).is_ok() && keep
}

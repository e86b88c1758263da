//! The origin: requests are relayed with `ureq` (no default features: nothing decompresses
//! or rewrites bodies; HTTP error statuses are answers; no redirects are followed; every
//! timeout and the pool size are set). Answers stream through the segment as they arrive.
//! A GET answer that may be stored (status 200, explicit freshness, no `no-store`,
//! `private`, `no-cache` or `Vary: *`, small enough) is kept in the LRU once it arrived
//! complete; a truncated body is never stored and aborts the transfer.

use crate::lru::{Stored, Validity};
use crate::receiver::Ctx;
use crate::respond::{self, Headers};
use common::config::{CachedConfig, Origin};
use common::http::{self as httpx, CacheOutcome};
use common::pool::Lease;
use common::protocol::{BodyLen, RequestHead};
use common::stats::Counters;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use ureq::http;

pub fn agent(cfg: &CachedConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .allow_non_standard_methods(true)
        .user_agent(ureq::config::AutoHeaderValue::None)
        .accept(ureq::config::AutoHeaderValue::None)
        .accept_encoding(ureq::config::AutoHeaderValue::None)
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_send_request(Some(cfg.read_timeout))
        .timeout_send_body(Some(cfg.read_timeout))
        .timeout_recv_response(Some(cfg.read_timeout))
        .timeout_per_read(Some(cfg.read_timeout))
        .timeout_global(None)
        .timeout_recv_body(None)
        .max_idle_connections(cfg.upstream_pool)
        .max_idle_connections_per_host(cfg.upstream_pool)
        .max_idle_age(Duration::from_secs(30))
        .no_delay(true)
        .build()
        .new_agent()
}

/// The LRU key of a target in origin mode.
pub fn cache_key(target: &str) -> String {
    target.to_string()
}

/// Reads the request body from the segment, at most `limit` bytes.
struct BodyFromSegment<'a, 'p> {
    lease: &'a mut Lease<'p>,
}

impl Read for BodyFromSegment<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lease.read(buf)
    }
}

fn is_unsafe(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

pub fn serve(ctx: &Ctx, lease: &mut Lease, req: &RequestHead, origin: &Origin) -> io::Result<()> {
    let head_only = req.method == "HEAD";
    let storable_request =
        (req.method == "GET" || head_only) && req.header("authorization").is_none();
    let key = cache_key(&req.target);
    if storable_request {
        if let Some(obj) = lookup(ctx, &key) {
            respond::drain(lease)?;
            Counters::inc(&ctx.counters().l2_hits);
            let mut headers = obj.headers.clone();
            let age = obj.initial_age
                + SystemTime::now()
                    .duration_since(obj.stored_at)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
            headers.push(("Age".into(), age.to_string().into_bytes()));
            return respond::full(
                lease,
                obj.status,
                CacheOutcome::Hit,
                headers,
                &obj.body,
                head_only,
            );
        }
        Counters::inc(&ctx.counters().l2_misses);
    } else {
        Counters::inc(&ctx.counters().passes);
    }

    let request = build_request(req, origin)?;
    let agent = ctx.agent.as_ref().expect("origin mode has an agent");
    Counters::inc(&ctx.counters().upstream_requests);
    let started = Instant::now();
    let result = match req.body {
        BodyLen::None => agent.run(request.body(()).map_err(io::Error::other)?),
        _ => {
            let mut body = BodyFromSegment { lease: &mut *lease };
            let send = ureq::SendBody::from_reader(&mut body);
            agent.run(request.body(send).map_err(io::Error::other)?)
        }
    };
    Counters::add(
        &ctx.counters().upstream_latency_us,
        started.elapsed().as_micros() as u64,
    );
    // Whatever the origin did with it, the request stream must be drained before we answer.
    respond::drain(lease)?;
    let response = match result {
        Ok(r) => r,
        Err(e) => return upstream_error(ctx, lease, e, head_only),
    };
    let status = response.status().as_u16();
    if is_unsafe(&req.method) && (200..400).contains(&status) {
        invalidate(ctx, &key, response.headers(), origin);
    }
    relay(ctx, lease, req, response, storable_request, key)
}

fn lookup(ctx: &Ctx, key: &str) -> Option<Arc<Stored>> {
    let mut lru = ctx.lru.lock().unwrap_or_else(|e| e.into_inner());
    let obj = lru.get(key)?;
    match obj.validity {
        Validity::Until(t) if Instant::now() < t => Some(obj),
        _ => {
            lru.remove(key);
            None
        }
    }
}

fn build_request(req: &RequestHead, origin: &Origin) -> io::Result<http::request::Builder> {
    let mut b = http::Request::builder()
        .method(req.method.as_bytes())
        .uri(origin.url_for(&req.target));
    let mut xff: Option<Vec<u8>> = None;
    for (name, value) in &req.headers {
        match name.to_ascii_lowercase().as_str() {
            // ureq sets Host from the origin URL; the client's goes in X-Forwarded-Host.
            "host" => b = b.header("X-Forwarded-Host", value.as_slice()),
            "x-forwarded-for" => xff = Some(value.clone()),
            "content-length" if req.body != BodyLen::None => {}
            _ => b = b.header(name.as_str(), value.as_slice()),
        }
    }
    let mut xff = xff
        .map(|mut v| {
            v.extend_from_slice(b", ");
            v
        })
        .unwrap_or_default();
    xff.extend_from_slice(req.client.as_bytes());
    b = b.header("X-Forwarded-For", xff).header(
        "Via",
        if req.version == 10 {
            "1.0 shmproxy"
        } else {
            "1.1 shmproxy"
        },
    );
    if let BodyLen::Exact(n) = req.body {
        b = b.header("Content-Length", n);
    }
    Ok(b)
}

fn upstream_error(ctx: &Ctx, lease: &mut Lease, e: ureq::Error, head_only: bool) -> io::Result<()> {
    let timed_out = matches!(e, ureq::Error::Timeout(_))
        || matches!(&e, ureq::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut);
    if timed_out {
        Counters::inc(&ctx.counters().upstream_timeouts);
        log::warn!("origin timed out: {e}");
        respond::error(lease, 504, "the origin did not answer in time", head_only)
    } else {
        Counters::inc(&ctx.counters().upstream_errors);
        log::warn!("origin failed: {e}");
        respond::error(
            lease,
            502,
            "the origin could not be reached or answered badly",
            head_only,
        )
    }
}

/// After a successful unsafe method: drop the target and its Location/Content-Location.
fn invalidate(ctx: &Ctx, key: &str, headers: &http::HeaderMap, origin: &Origin) {
    let mut lru = ctx.lru.lock().unwrap_or_else(|e| e.into_inner());
    lru.remove(key);
    for h in ["location", "content-location"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            let prefix = format!("http://{}{}", origin.authority, origin.prefix);
            let target = v.strip_prefix(&prefix).unwrap_or(v);
            if target.starts_with('/') {
                lru.remove(target);
            }
        }
    }
}

/// Freshness lifetime from `s-maxage`, `max-age` or `Expires` − `Date`; `None` when the
/// answer must not be stored.
fn storable_for(status: u16, headers: &http::HeaderMap) -> Option<Duration> {
    if status != 200 {
        return None;
    }
    let mut max_age = None;
    let mut s_maxage = None;
    for v in headers.get_all("cache-control") {
        for d in httpx::tokens(v.as_bytes()) {
            match d.split_once('=') {
                Some(("max-age", n)) => max_age = n.trim_matches('"').parse::<u64>().ok(),
                Some(("s-maxage", n)) => s_maxage = n.trim_matches('"').parse::<u64>().ok(),
                Some(("no-cache" | "private", _)) => return None,
                None if matches!(d.as_str(), "no-store" | "private" | "no-cache") => return None,
                _ => {}
            }
        }
    }
    if headers
        .get_all("vary")
        .iter()
        .any(|v| httpx::tokens(v.as_bytes()).iter().any(|t| t == "*"))
    {
        return None;
    }
    let life = s_maxage.or(max_age).map(Duration::from_secs).or_else(|| {
        let parse = |h: &str| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(common::http::parse_http_date)
        };
        let expires = parse("expires")?;
        let date = parse("date").unwrap_or_else(SystemTime::now);
        Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
    })?;
    let age = headers
        .get("age")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    life.checked_sub(Duration::from_secs(age))
        .filter(|d| !d.is_zero())
}

fn relay(
    ctx: &Ctx,
    lease: &mut Lease,
    req: &RequestHead,
    response: http::Response<ureq::Body>,
    storable_request: bool,
    key: String,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let connection_tokens: Vec<String> = parts
        .headers
        .get_all("connection")
        .iter()
        .flat_map(|v| httpx::tokens(v.as_bytes()))
        .collect();
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let head_only = req.method == "HEAD";
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    let mut headers: Headers = Vec::new();
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if httpx::is_hop_by_hop(name, &connection_tokens)
            || (name == "content-length" && !head_only)
        {
            continue;
        }
        headers.push((name.to_string(), value.as_bytes().to_vec()));
    }
    let framing = match (no_body, declared) {
        (true, _) => BodyLen::None,
        (false, Some(n)) => BodyLen::Exact(n),
        (false, None) => BodyLen::Unknown,
    };
    let lifetime = if storable_request && req.method == "GET" {
        storable_for(status, &parts.headers)
    } else {
        None
    };
    let limit = ctx.cfg.max_object_size.min(ctx.cfg.capacity);
    let mut keep: Option<Vec<u8>> = match (lifetime, declared) {
        (Some(_), Some(n)) if n <= limit => Some(Vec::with_capacity(n as usize)),
        (Some(_), None) => Some(Vec::new()),
        _ => None,
    };
    let outcome = if storable_request {
        CacheOutcome::Miss
    } else {
        CacheOutcome::Pass
    };
    respond::head(lease, status, framing, outcome, headers.clone())?;
    if !no_body {
        let mut reader = body.into_reader();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    Counters::inc(&ctx.counters().upstream_errors);
                    log::warn!(
                        "origin body for {} failed after {total} bytes: {e}",
                        req.target
                    );
                    return Err(e);
                }
            };
            lease.write_all(&buf[..n])?;
            // Stream on: let the proxy send what we have while the origin trickles.
            lease.flush()?;
            total += n as u64;
            if let Some(k) = keep.as_mut() {
                if k.len() + n <= limit as usize {
                    k.extend_from_slice(&buf[..n]);
                } else {
                    keep = None;
                }
            }
        }
        if declared.is_some_and(|d| d != total) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "origin body shorter than its Content-Length",
            ));
        }
    }
    lease.finish()?;
    if let (Some(life), Some(body)) = (lifetime, keep) {
        if !no_body {
            let initial_age = parts
                .headers
                .get("age")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
            let obj = Stored {
                status,
                headers,
                body,
                validity: Validity::Until(Instant::now() + life),
                stored_at: SystemTime::now(),
                initial_age,
            };
            crate::source::store(ctx, key, Arc::new(obj));
        }
    }
    Ok(())
}

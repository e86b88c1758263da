//! Origin mode's source: which site a request belongs to (by its `Host`) and its cache key,
//! the request as a reverse proxy forwards it to one of the site's servers (through
//! [`crate::upstream`]), with its body from the segment, and the checks an answer must pass
//! before it may be relayed (framing that can be reproduced exactly, end-to-end fields).
//! It fetches and reports; what is stored, served or shared is decided by `phase` and
//! carried out by `fill` and `revalidate`.

use crate::ctx::Ctx;
use crate::error::SourceError;
use crate::respond;
use crate::stored::Stored;
use crate::upstream::{Answer, Outgoing, SendBody, SiteUp};
use common::config::Site;
use common::http::Headers;
use common::http::{self as httpx, trim_ows};
use common::pool::Lease;
use common::protocol::{BodyLen, RequestHead};
use std::io::{self, Read};
use ureq::http;

/// The site a request belongs to (by its `Host`), as an index into the sites; `None`:
/// no site serves that host.
pub fn site_of(ctx: &Ctx, req: &RequestHead) -> Option<usize> {
    let cfg = ctx.cfg();
    let site = cfg.site_for(req.header("host").unwrap_or_default())?;
    cfg.sites.iter().position(|s| std::ptr::eq(s, site))
}

/// The primary cache key of a request in origin mode: its site, the normalised host the
/// proxy forwards in `Host` (lowercase, default port dropped), then the target. An origin
/// that reflects `Host` thus never has one host's answer served for another.
pub fn cache_key(site: &Site, req: &RequestHead) -> String {
    host_key(site, req.header("host").unwrap_or_default(), &req.target)
}

pub fn host_key(site: &Site, host: &[u8], target: &str) -> String {
    // Past the site's name, the arena's key of the same answer (`published` splits it).
    format!(
        "{} {}",
        site.name,
        common::hit::key(&String::from_utf8_lossy(host), target)
    )
}

pub fn is_unsafe(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Sends the request to a server of the site (with its body from the segment, if any) and
/// returns the answer if its framing can be relayed ([`bad_framing`]). It is sent
/// as a reverse proxy forwards it: `X-Forwarded-For` gets the client appended,
/// `X-Forwarded-Host` and `X-Forwarded-Proto` say what the client asked for (a trusted
/// front end's own are passed on instead: the proxy drops any other client's), `Via` names
/// us, and `Host` follows the site's `host_header`. `extra` fields replace the client's of
/// the same name (the validators of a revalidation).
pub fn send<'u>(
    lease: Option<&mut Lease>,
    req: &RequestHead,
    site: &'u SiteUp,
    extra: &[(&str, Vec<u8>)],
) -> Result<Answer<'u>, SourceError> {
    let mut headers: Headers = Vec::with_capacity(req.headers.len() + 4);
    let mut xff: Option<Vec<u8>> = None;
    let replaced = |name: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let client_host = req.header("host").unwrap_or_default();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if replaced(&lower) {
            continue;
        }
        match lower.as_str() {
            "host" | "content-length" => {}
            "x-forwarded-for" => xff = Some(value.clone()),
            _ => headers.push((name.clone(), value.clone())),
        }
    }
    if req.header("x-forwarded-host").is_none() {
        headers.push(("X-Forwarded-Host".into(), client_host.to_vec()));
    }
    if req.header("x-forwarded-proto").is_none() {
        headers.push(("X-Forwarded-Proto".into(), b"http".to_vec()));
    }
    for (k, v) in extra {
        headers.push((k.to_string(), v.clone()));
    }
    let mut xff = xff
        .map(|mut v| {
            v.extend_from_slice(b", ");
            v
        })
        .unwrap_or_default();
    xff.extend_from_slice(req.client.as_bytes());
    headers.push(("X-Forwarded-For".into(), xff));
    headers.push((
        "Via".into(),
        common::node::via(req.version, &site.node).into_bytes(),
    ));
    let primary = cache_key(&site.site, req);
    let out = Outgoing {
        method: &req.method,
        target: &req.target,
        headers,
        client_host,
        key: &primary,
    };
    let answer = match (req.body, lease) {
        // Interim answers go to the client's segment as they come (`upstream::interim`);
        // while a request body is read from the segment, they are dropped.
        (BodyLen::None, Some(lease)) => {
            let mut forward = |status: u16, fields: &Headers| {
                let _ = respond::interim(lease, status, fields);
            };
            common::lent::lend(&mut forward, || site.send(&out, None))
        }
        (BodyLen::None, None) => site.send(&out, None),
        (declared, lease) => {
            let left = match declared {
                BodyLen::Exact(n) => Some(n),
                _ => None,
            };
            let Some(lease) = lease else {
                return Err(SourceError::Protocol(
                    "a request body without its segment".into(),
                ));
            };
            let mut body = BodyFromSegment { lease, left };
            let body = SendBody {
                reader: &mut body,
                len: left,
            };
            site.send(&out, Some(body))
        }
    }?;
    let r = &answer.response;
    if let Some(why) = bad_framing(r.status(), r.version(), r.headers()) {
        // Dropping the unread answer closes its connection: it is never reused.
        log::warn!("origin answer for {} refused: {why}", req.target);
        return Err(SourceError::BadFraming(why));
    }
    Ok(answer)
}

/// Sends a PURGE on to a server of the site (`cached.purge_forward`: an edge purges its
/// shield too) and reads the short answer; `Ok(true)` when the server had the object (2xx).
pub fn forward_purge(req: &RequestHead, site: &SiteUp) -> Result<bool, SourceError> {
    let mut answer = send(None, req, site, &[])?;
    let had = answer.response.status().is_success();
    // Read (bounded) so the connection can be reused; a failure here only costs it.
    let _ = answer
        .response
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec();
    Ok(had)
}

/// The request body, read from the segment. A body of known length that ends early (or
/// runs long) is an error: ureq, promised `Content-Length` bytes, would otherwise call a
/// reader at its end again and again without waiting (a spin until the send timeout).
struct BodyFromSegment<'a, 'p> {
    lease: &'a mut Lease<'p>,
    /// Bytes still owed by a body of known length.
    left: Option<u64>,
}

impl Read for BodyFromSegment<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left else {
            return self.lease.read(buf);
        };
        if left == 0 {
            // Whatever follows the announced length is not part of this body.
            return match self.lease.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request body longer than its Content-Length",
                )),
            };
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        match self.lease.read(&mut buf[..want])? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body shorter than its Content-Length",
            )),
            n => {
                self.left = Some(left - n as u64);
                Ok(n)
            }
        }
    }
}

/// Why an origin answer cannot be relayed: its framing is one we cannot reproduce exactly
/// (RFC 9112 §6.1-6.3, §7), so whatever we told the client, the bytes that follow could be
/// read as something else. `None`: fine. ureq takes any `chunked` element as chunked and
/// keeps the fields as received, so the check runs on the raw fields.
fn bad_framing(
    status: http::StatusCode,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Option<&'static str> {
    let status = status.as_u16();
    // ureq consumes 100 and the other interim answers itself; what is left is a 101 we
    // never asked for (we send no Upgrade), or a final status outside 2xx-5xx.
    if status < 200 {
        return Some("an interim (1xx) answer we did not ask for");
    }
    if status > 599 {
        return Some("a status outside 100-599");
    }
    let te: Vec<&[u8]> = headers
        .get_all("transfer-encoding")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let cl: Vec<&[u8]> = headers
        .get_all("content-length")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Some("both Transfer-Encoding and Content-Length");
        }
        if version == http::Version::HTTP_10 {
            return Some("Transfer-Encoding in an HTTP/1.0 answer");
        }
        if te.len() != 1 || !trim_ows(te[0]).eq_ignore_ascii_case(b"chunked") {
            return Some("a Transfer-Encoding other than chunked");
        }
    }
    match cl.as_slice() {
        [] => {}
        [v] if !trim_ows(v).is_empty() && trim_ows(v).iter().all(u8::is_ascii_digit) => {
            if std::str::from_utf8(trim_ows(v))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_none()
            {
                return Some("a Content-Length out of range");
            }
        }
        [_] => return Some("an invalid Content-Length"),
        _ => return Some("more than one Content-Length"),
    }
    None
}

/// The `Content-Length` an answer announces (one valid value: `bad_framing` checked it).
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A field name that is a framing or hop-by-hop name once `_` reads as `-`
/// (`Transfer_Encoding`): some servers and CGI gateways treat the two alike, so such a
/// field is never relayed beside the real framing.
fn framing_alias(name: &str) -> bool {
    name.contains('_') && {
        let dashed = name.replace('_', "-");
        dashed.eq_ignore_ascii_case("content-length")
            || dashed.eq_ignore_ascii_case("transfer-encoding")
            || httpx::is_hop_by_hop(&dashed, &[])
    }
}

/// End-to-end headers of an upstream answer (hop-by-hop and framing removed; a HEAD
/// answer keeps its Content-Length as metadata).
pub fn end_to_end(headers: &http::HeaderMap, head_only: bool) -> Headers {
    let connection: Vec<String> = headers
        .get_all("connection")
        .iter()
        .flat_map(|v| httpx::tokens(v.as_bytes()))
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            !httpx::is_hop_by_hop(name.as_str(), &connection)
                && !framing_alias(name.as_str())
                && (name.as_str() != "content-length" || head_only)
        })
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// The conditional fields that ask whether `obj` changed (none without validators).
pub fn validators(obj: &Stored) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    if let Some(etag) = obj.headers.get("etag") {
        v.push(("If-None-Match", etag.to_vec()));
    }
    if let Some(lm) = obj.headers.get("last-modified") {
        v.push(("If-Modified-Since", lm.to_vec()));
    }
    v
}

//! Reading a request head: `httparse` plus the checks it leaves to us (limits, framing,
//! smuggling defences, origin-form targets). Pure: bytes in, a `Request` or a status out.

use common::config::ProxyConfig;
use common::protocol::BodyLen;

/// Longest request line (method, target, version) before 414.
pub const MAX_REQUEST_LINE: usize = 8192;

/// A parsed, validated request head.
pub struct Request {
    pub method: String,
    pub target: String,
    /// 10 or 11.
    pub version: u8,
    /// End-to-end headers in order (hop-by-hop removed).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: ClientBody,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientBody {
    None,
    Length(u64),
    Chunked,
}

impl ClientBody {
    pub fn framing(self) -> BodyLen {
        match self {
            ClientBody::None => BodyLen::None,
            ClientBody::Length(n) => BodyLen::Exact(n),
            ClientBody::Chunked => BodyLen::Unknown,
        }
    }
}

pub enum Parsed {
    Complete(Request, usize),
    Partial,
    Error(u16, &'static str),
}

pub fn parse_head(cfg: &ProxyConfig, buf: &[u8]) -> Parsed {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.map_or(buf.len(), |i| i) > MAX_REQUEST_LINE {
        return Parsed::Error(414, "request line too long");
    }
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > cfg.max_header_bytes {
                Parsed::Error(431, "request head too large")
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(431, "too many header fields")
        }
        Err(_) => return Parsed::Error(400, "malformed request"),
    };
    if head_len > cfg.max_header_bytes {
        return Parsed::Error(431, "request head too large");
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let version = if req.version == Some(0) { 10 } else { 11 };
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Parsed::Error(
            400,
            "only origin-form request targets are accepted (this is not an open proxy)",
        );
    }
    let mut connection = Vec::new();
    let mut lengths = Vec::new();
    let mut te: Option<Vec<String>> = None;
    let mut has_host = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            connection.extend(common::http::tokens(h.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te.get_or_insert_with(Vec::new)
                .extend(common::http::tokens(h.value));
        } else if name.eq_ignore_ascii_case("host") {
            has_host = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
        if h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Parsed::Error(400, "control character in a header value");
        }
    }
    if version == 11 && !has_host {
        return Parsed::Error(400, "HTTP/1.1 request without Host");
    }
    let body = match (te, lengths.as_slice()) {
        (Some(_), [_, ..]) => {
            return Parsed::Error(400, "both Content-Length and Transfer-Encoding")
        }
        (Some(codings), []) if codings == ["chunked"] => ClientBody::Chunked,
        (Some(_), []) => return Parsed::Error(400, "unsupported Transfer-Encoding (only chunked)"),
        (None, []) => ClientBody::None,
        (None, [first, rest @ ..]) => {
            if rest.iter().any(|v| v != first) {
                return Parsed::Error(400, "conflicting Content-Length values");
            }
            let s = std::str::from_utf8(first).unwrap_or("");
            match s.parse::<u64>() {
                Ok(0) => ClientBody::None,
                Ok(n) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    ClientBody::Length(n)
                }
                _ => return Parsed::Error(400, "invalid Content-Length"),
            }
        }
    };
    let keep_alive = if version == 11 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    let headers = req
        .headers
        .iter()
        .filter(|h| {
            !common::http::is_hop_by_hop(h.name, &connection)
                && !h.name.eq_ignore_ascii_case("expect")
        })
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    Parsed::Complete(
        Request {
            method,
            target,
            version,
            headers,
            body,
            keep_alive,
            expect_continue,
        },
        head_len,
    )
}

//! Reading a client's request head: `httparse` plus the checks it leaves to us — size
//! limits (414/431), body framing, and the defences against request smuggling (both
//! `Content-Length` and `Transfer-Encoding`, duplicate or invalid `Content-Length`, a coding
//! other than a final `chunked`, bare LF, control bytes in values, obs-fold) and against
//! being used as an open proxy (absolute-form targets for other hosts).
//! Pure: bytes in, a [`Request`] or a status out. The proxy's workers call it; so do the fuzzers.

use crate::protocol::BodyLen;
use std::mem::MaybeUninit;

/// Longest request line (method, target, version) before 414.
pub const MAX_REQUEST_LINE: usize = 8192;

/// Limits the parser enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest head in bytes (431 above).
    pub max_header_bytes: usize,
    /// Most header fields (431 above).
    pub max_headers: usize,
}

/// A parsed, validated request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Origin-form target (an accepted absolute-form target is rewritten to origin-form).
    pub target: String,
    /// 10 or 11.
    pub version: u8,
    /// End-to-end headers in order (hop-by-hop, and those named by `Connection`, removed).
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

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A request, and the length of its head in the buffer.
    Complete(Request, usize),
    /// Need more bytes.
    Partial,
    /// Answer with this status and close.
    Error(u16, &'static str),
}

/// Bare LF, or any control byte other than HTAB inside a field line.
fn bad_line_endings(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn bad_value(v: &[u8]) -> bool {
    v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

pub fn parse_head(limits: &Limits, buf: &[u8]) -> Parsed {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.unwrap_or(buf.len()) > MAX_REQUEST_LINE {
        return Parsed::Error(414, "request line too long");
    }
    // Uninitialised header slots: no per-request memset of the whole array.
    let mut stack = [const { MaybeUninit::<httparse::Header>::uninit() }; 128];
    let mut heap;
    let slots: &mut [MaybeUninit<httparse::Header>] = if limits.max_headers <= stack.len() {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![MaybeUninit::uninit(); limits.max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_header_bytes {
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
    if head_len > limits.max_header_bytes {
        return Parsed::Error(431, "request head too large");
    }
    if bad_line_endings(&buf[..head_len]) {
        return Parsed::Error(400, "bare LF in the request head (CRLF required)");
    }
    let method = req.method.unwrap_or_default().to_string();
    let mut target = req.path.unwrap_or_default().to_string();
    let version = if req.version == Some(0) { 10 } else { 11 };
    let mut connection = Vec::new();
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut te: Option<Vec<String>> = None;
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if bad_value(h.value) {
            return Parsed::Error(400, "control character in a header value");
        }
        if name.eq_ignore_ascii_case("connection") {
            connection.extend(crate::http::tokens(h.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te.get_or_insert_with(Vec::new)
                .extend(crate::http::tokens(h.value));
        } else if name.eq_ignore_ascii_case("host") {
            host = Some(h.value);
            hosts += 1;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if hosts > 1 {
        return Parsed::Error(400, "more than one Host header");
    }
    if version == 11 && host.is_none() {
        return Parsed::Error(400, "HTTP/1.1 request without Host");
    }
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // Absolute-form: accepted only for the host the client addresses us as.
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if host.is_none_or(|h| !h.eq_ignore_ascii_case(authority.as_bytes())) {
            return Parsed::Error(
                400,
                "absolute-form target for another host (this is not an open proxy)",
            );
        }
        target = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
    }
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Parsed::Error(400, "unsupported request target form");
    }
    let body = match (te, lengths.as_slice()) {
        (Some(_), [_, ..]) => {
            return Parsed::Error(400, "both Content-Length and Transfer-Encoding")
        }
        (Some(codings), []) if codings == ["chunked"] => ClientBody::Chunked,
        (Some(_), []) => {
            return Parsed::Error(400, "unsupported Transfer-Encoding (only a single chunked)")
        }
        (None, []) => ClientBody::None,
        (None, [_, _, ..]) => return Parsed::Error(400, "duplicate Content-Length"),
        (None, [one]) => {
            let s = std::str::from_utf8(one).unwrap_or("");
            match s.parse::<u64>() {
                Ok(0) if s.bytes().all(|b| b.is_ascii_digit()) => ClientBody::None,
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
            !crate::http::is_hop_by_hop(h.name, &connection)
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 16 << 10,
        max_headers: 100,
    };

    fn parse(s: &str) -> Parsed {
        parse_head(&LIMITS, s.as_bytes())
    }

    fn status(s: &str) -> u16 {
        match parse(s) {
            Parsed::Error(code, _) => code,
            Parsed::Complete(..) => 0,
            Parsed::Partial => 1,
        }
    }

    #[test]
    fn a_plain_request_parses() {
        let Parsed::Complete(r, n) = parse("GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\nrest") else { panic!() };
        assert_eq!(
            (
                r.method.as_str(),
                r.target.as_str(),
                r.version,
                r.keep_alive
            ),
            ("GET", "/a?b", 11, false)
        );
        assert_eq!(n, "GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\n".len());
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Host", "Accept"]);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), 1);
    }

    #[test]
    fn smuggling_attempts_are_refused() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET http://elsewhere.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET example HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n"),
            400
        );
    }

    #[test]
    fn framing_and_forms() {
        let Parsed::Complete(r, _) =
            parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(r.body, ClientBody::Chunked);
        let Parsed::Complete(r, _) =
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(r.body, ClientBody::Length(12));
        let Parsed::Complete(r, _) = parse("GET http://x/p?q HTTP/1.1\r\nHost: x\r\n\r\n") else {
            panic!()
        };
        assert_eq!(r.target, "/p?q");
        let Parsed::Complete(r, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        else {
            panic!()
        };
        assert!(r.keep_alive && r.version == 10);
        assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
        assert_eq!(
            status(&format!(
                "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(9000)
            )),
            414
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(17 << 10)
        );
        assert_eq!(status(&big), 431);
        let many: String = (0..101).map(|i| format!("X{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
    }

    #[test]
    fn any_prefix_is_partial_or_an_error_never_a_panic() {
        let full = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        for n in 0..full.len() {
            assert!(!matches!(
                parse_head(&LIMITS, &full[..n]),
                Parsed::Complete(..)
            ));
        }
    }
}

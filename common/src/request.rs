//! Reading a client's request head: `httparse` plus the checks it leaves to us — size
//! limits (414/431), body framing, and the defences against request smuggling (both
//! `Content-Length` and `Transfer-Encoding`, duplicate or invalid `Content-Length`, a coding
//! other than exactly `chunked` after OWS trimming, `Transfer-Encoding` in HTTP/1.0, `_`
//! aliases of framing fields, bare LF, control bytes in values, obs-fold) and against
//! being used as an open proxy (absolute-form targets for other hosts). `Host` is validated
//! (RFC 9112 §3.2) and normalised: it is part of the cache key. The chunked-body grammar
//! (size lines, extensions, trailer fields) is here too, for the worker's body reader.
//! Every refusal is a [`RejectReason`], whose [`RejectReason::verdict`] is the one place that
//! gives it a status and a `rejected_requests` counter.
//! Pure: bytes in, a [`Request`] or a [`RejectReason`] out. The proxy's workers call it; so
//! do the fuzzers.

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
    /// The normalised host the request is for (lowercase, default port dropped): the
    /// absolute-form target's authority, else `Host`; empty for an HTTP/1.0 request
    /// without either. Part of every cache key; the forwarded `Host` carries it.
    pub host: String,
    /// End-to-end headers in order (hop-by-hop, and those named by `Connection`, removed;
    /// `Host` always kept, its value the normalised host).
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
    /// Refused: answer with [`RejectReason::status`] and close.
    Error(RejectReason),
}

/// The `rejected_requests` counter a refusal counts in (one per `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectCounter {
    /// 414: request line or target too long.
    LineTooLong,
    /// 431: head too large or too many header fields.
    HeadTooLarge,
    /// 400 on message framing: Content-Length/Transfer-Encoding conflicts (smuggling
    /// defences), invalid Content-Length, unsupported Transfer-Encoding, malformed chunked body.
    Framing,
    /// 413: body larger than `max_body_bytes`.
    BodyTooLarge,
    /// Any other 400 (syntax, missing Host, control characters, not origin-form).
    Malformed,
}

/// Every way a request is refused before it is forwarded: by the head parser
/// ([`parse_head`]), by the worker's body reader, or because the head does not fit a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The request line is longer than [`MAX_REQUEST_LINE`].
    LineTooLong,
    /// The head is larger than `max_header_bytes`.
    HeadTooLarge,
    /// More header fields than `max_headers`.
    TooManyHeaders,
    /// Not an HTTP/1.x request head (`httparse` refused it).
    Malformed,
    /// A line ends in LF without CR.
    BareLf,
    /// A control byte other than HTAB in a field value (obs-fold included).
    ControlInValue,
    /// `Content_Length`, `Transfer_Encoding` or `Host` spelt with `_`.
    UnderscoreFraming,
    DuplicateHost,
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// `Host` is not `uri-host [":" port]`.
    InvalidHost,
    /// The authority of an absolute-form target is not `uri-host [":" port]`.
    InvalidAuthority,
    /// An absolute-form target names another host than `Host` (not an open proxy).
    ForeignAuthority,
    /// Neither origin-form nor `OPTIONS *`.
    TargetForm,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 §6.1).
    ChunkedHttp10,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// A transfer coding other than exactly one `chunked`.
    UnsupportedCoding,
    DuplicateLength,
    /// `Content-Length` that is not 1*DIGIT fitting a u64.
    InvalidLength,
    /// The body is larger than `max_body_bytes` (declared or read).
    BodyTooLarge,
    /// A chunked body that breaks the grammar (size line, trailer section).
    MalformedBody,
    /// The encoded head would not fit a segment, and the target is most of it.
    TargetTooLongForSegment,
    /// The encoded head would not fit a segment.
    HeadTooLargeForSegment,
}

impl RejectReason {
    /// The answer's status and the counter the refusal counts in: the one place both are
    /// decided.
    pub const fn verdict(self) -> (u16, RejectCounter) {
        use RejectCounter as C;
        use RejectReason as R;
        match self {
            R::LineTooLong | R::TargetTooLongForSegment => (414, C::LineTooLong),
            R::HeadTooLarge | R::TooManyHeaders | R::HeadTooLargeForSegment => {
                (431, C::HeadTooLarge)
            }
            R::BodyTooLarge => (413, C::BodyTooLarge),
            R::ChunkedHttp10
            | R::LengthAndChunked
            | R::UnsupportedCoding
            | R::DuplicateLength
            | R::InvalidLength
            | R::UnderscoreFraming
            | R::MalformedBody => (400, C::Framing),
            R::Malformed
            | R::BareLf
            | R::ControlInValue
            | R::DuplicateHost
            | R::MissingHost
            | R::InvalidHost
            | R::InvalidAuthority
            | R::ForeignAuthority
            | R::TargetForm => (400, C::Malformed),
        }
    }

    pub const fn status(self) -> u16 {
        self.verdict().0
    }

    /// The text of the answer's body (after the status and its reason phrase).
    pub const fn message(self) -> &'static str {
        use RejectReason as R;
        match self {
            R::LineTooLong => "request line too long",
            R::HeadTooLarge => "request head too large",
            R::TooManyHeaders => "too many header fields",
            R::Malformed => "malformed request",
            R::BareLf => "bare LF in the request head (CRLF required)",
            R::ControlInValue => "control character in a header value",
            R::UnderscoreFraming => {
                "'_' in a framing header name (Content-Length, Transfer-Encoding, Host)"
            }
            R::DuplicateHost => "more than one Host header",
            R::MissingHost => "HTTP/1.1 request without Host",
            R::InvalidHost => "invalid Host (RFC 9112 §3.2)",
            R::InvalidAuthority => "invalid authority in an absolute-form target",
            R::ForeignAuthority => {
                "absolute-form target for another host (this is not an open proxy)"
            }
            R::TargetForm => "unsupported request target form",
            R::ChunkedHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            R::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            R::UnsupportedCoding => "unsupported Transfer-Encoding (only a single chunked)",
            R::DuplicateLength => "duplicate Content-Length",
            R::InvalidLength => "invalid Content-Length",
            R::BodyTooLarge => "request body too large",
            R::MalformedBody => "malformed request body",
            R::TargetTooLongForSegment => "request target too long for a segment",
            R::HeadTooLargeForSegment => "request head too large for a segment",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
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

/// Fields that frame or address a request: a name that only differs by `_` is refused.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "host"];

/// Fields that describe the client to the origin; the worker replaces them unless the
/// peer is a trusted proxy.
pub const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
];

/// `name` reads as `real` once each `_` is taken for `-`.
fn underscore_alias(name: &str, real: &str) -> bool {
    name.len() == real.len()
        && name
            .bytes()
            .zip(real.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// `Proxy_Connection`, `X_Forwarded_For`, ...: an origin that folds `_` into `-` would read
/// them as the real hop-by-hop or forwarding fields, so they are not forwarded.
fn underscore_hop(name: &str) -> bool {
    name.contains('_')
        && crate::http::HOP_BY_HOP
            .iter()
            .chain(FORWARDING)
            .any(|f| underscore_alias(name, f))
}

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The normalised form of a `Host` value or authority (RFC 9112 §3.2, RFC 3986 §3.2.2):
/// `reg-name` / IPv4 / `[IP-literal]`, an optional `:port` of digits; lower-cased, the
/// port dropped when it is `default_port` or empty. `None` if it is not one.
pub fn normalize_host(v: &[u8], default_port: &str) -> Option<String> {
    let v = std::str::from_utf8(crate::http::trim_ows(v)).ok()?;
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let close = rest.find(']')?;
        let literal = &rest[..close];
        let ok = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ok {
            return None;
        }
        let after = &rest[close + 1..];
        (
            &v[..close + 2],
            if after.is_empty() {
                None
            } else {
                Some(after.strip_prefix(':')?)
            },
        )
    } else {
        let (h, p) = match v.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        };
        let b = h.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if b.len() > i + 2
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit() =>
                {
                    i += 2
                }
                c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c) => {}
                _ => return None,
            }
            i += 1;
        }
        if h.is_empty() {
            return None;
        }
        (h, p)
    };
    let mut out = host.to_ascii_lowercase();
    match port {
        Some(p) if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => return None,
        Some(p) if !p.is_empty() => {
            let digits = p.trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            if digits != default_port {
                out.push(':');
                out.push_str(digits);
            }
        }
        _ => {}
    }
    Some(out)
}

/// A chunk-size line without its CRLF (RFC 9112 §7.1.1): `1*HEXDIG *( BWS ";" BWS name
/// [ BWS "=" BWS ( token / quoted-string ) ] )`. The size, or `None` for anything else
/// (bare CR, NUL, other control bytes, a size over 15 hex digits).
///
/// `httparse::parse_chunk_size` reads the size; the extensions, which it lets through
/// whatever their bytes, are checked here against the grammar.
pub fn chunk_size_line(line: &[u8]) -> Option<u64> {
    const MAX_DIGITS: usize = 15;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_DIGITS {
        return None;
    }
    let mut size_line = [0u8; MAX_DIGITS + 2];
    size_line[..digits].copy_from_slice(&line[..digits]);
    size_line[digits..digits + 2].copy_from_slice(b"\r\n");
    let Ok(httparse::Status::Complete((_, size))) =
        httparse::parse_chunk_size(&size_line[..digits + 2])
    else {
        return None;
    };
    let mut rest = &line[digits..];
    let ows = |r: &mut &[u8]| {
        while let [b' ' | b'\t', tail @ ..] = *r {
            *r = tail;
        }
    };
    let token = |r: &mut &[u8]| -> bool {
        let n = r.iter().take_while(|&&b| is_tchar(b)).count();
        *r = &r[n..];
        n > 0
    };
    loop {
        ows(&mut rest);
        if rest.is_empty() {
            return Some(size);
        }
        let [b';', tail @ ..] = rest else { return None };
        rest = tail;
        ows(&mut rest);
        if !token(&mut rest) {
            return None;
        }
        let mut probe = rest;
        ows(&mut probe);
        let [b'=', tail @ ..] = probe else { continue };
        rest = tail;
        ows(&mut rest);
        if let [b'"', tail @ ..] = rest {
            rest = tail;
            loop {
                match rest {
                    [b'"', tail @ ..] => {
                        rest = tail;
                        break;
                    }
                    [b'\\', c, tail @ ..] if *c == b'\t' || *c >= 0x20 && *c != 0x7f => rest = tail,
                    [c, tail @ ..] if *c == b'\t' || (*c >= 0x20 && *c != 0x7f && *c != b'\\') => {
                        rest = tail
                    }
                    _ => return None,
                }
            }
        } else if !token(&mut rest) {
            return None;
        }
    }
}

/// A trailer field line (RFC 9112 §7.1.2, a `field-line` of §5): `token ":" OWS value OWS`,
/// the value free of control bytes but HTAB. A request line, an obs-fold or a bare CR is not.
pub fn trailer_field_line(line: &[u8]) -> bool {
    let n = line.iter().take_while(|&&b| is_tchar(b)).count();
    n > 0 && line.get(n) == Some(&b':') && !bad_value(&line[n + 1..])
}

pub fn parse_head(limits: &Limits, buf: &[u8]) -> Parsed {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.unwrap_or(buf.len()) > MAX_REQUEST_LINE {
        return Parsed::Error(RejectReason::LineTooLong);
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
                Parsed::Error(RejectReason::HeadTooLarge)
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(RejectReason::TooManyHeaders),
        Err(_) => return Parsed::Error(RejectReason::Malformed),
    };
    if head_len > limits.max_header_bytes {
        return Parsed::Error(RejectReason::HeadTooLarge);
    }
    if bad_line_endings(&buf[..head_len]) {
        return Parsed::Error(RejectReason::BareLf);
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
            return Parsed::Error(RejectReason::ControlInValue);
        }
        if name.contains('_') && FRAMING.iter().any(|f| underscore_alias(name, f)) {
            return Parsed::Error(RejectReason::UnderscoreFraming);
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
        return Parsed::Error(RejectReason::DuplicateHost);
    }
    if version == 11 && host.is_none() {
        return Parsed::Error(RejectReason::MissingHost);
    }
    let mut norm_host = match host {
        Some(h) => match normalize_host(h, "80") {
            Some(n) => n,
            None => return Parsed::Error(RejectReason::InvalidHost),
        },
        None => String::new(),
    };
    // The client speaks plain HTTP to us: port 80 is the default whatever scheme the target
    // names, so the normal form is the same on a second pass (the forwarded `Host`).
    let absolute = ["http://", "https://"].into_iter().find_map(|scheme| {
        let n = scheme.len();
        (target.len() >= n && target.as_bytes()[..n].eq_ignore_ascii_case(scheme.as_bytes()))
            .then(|| &target[n..])
    });
    if let Some(rest) = absolute {
        // Absolute-form: its authority is the host (RFC 9112 §3.2.2), accepted only when it
        // is the one the client addresses us as (this is not an open proxy).
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let Some(auth) = normalize_host(authority.as_bytes(), "80") else {
            return Parsed::Error(RejectReason::InvalidAuthority);
        };
        if host.is_some() && auth != norm_host {
            return Parsed::Error(RejectReason::ForeignAuthority);
        }
        norm_host = auth;
        target = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
    }
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Parsed::Error(RejectReason::TargetForm);
    }
    if te.is_some() && version == 10 {
        // RFC 9112 §6.1: faulty framing, whatever else the message says.
        return Parsed::Error(RejectReason::ChunkedHttp10);
    }
    let body = match (te, lengths.as_slice()) {
        (Some(_), [_, ..]) => return Parsed::Error(RejectReason::LengthAndChunked),
        (Some(codings), []) if codings == ["chunked"] => ClientBody::Chunked,
        (Some(_), []) => return Parsed::Error(RejectReason::UnsupportedCoding),
        (None, []) => ClientBody::None,
        (None, [_, _, ..]) => return Parsed::Error(RejectReason::DuplicateLength),
        (None, [one]) => {
            let s = std::str::from_utf8(one).unwrap_or("");
            match s.parse::<u64>() {
                Ok(0) if s.bytes().all(|b| b.is_ascii_digit()) => ClientBody::None,
                Ok(n) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    ClientBody::Length(n)
                }
                _ => return Parsed::Error(RejectReason::InvalidLength),
            }
        }
    };
    let keep_alive = if version == 11 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    let mut headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .filter(|h| {
            // `Connection: host` cannot take the host away: it is part of the cache key.
            h.name.eq_ignore_ascii_case("host")
                || !crate::http::is_hop_by_hop(h.name, &connection)
                    && !h.name.eq_ignore_ascii_case("expect")
                    && !underscore_hop(h.name)
        })
        .map(|h| {
            if h.name.eq_ignore_ascii_case("host") {
                (h.name.to_string(), norm_host.clone().into_bytes())
            } else {
                (h.name.to_string(), h.value.to_vec())
            }
        })
        .collect();
    if host.is_none() && !norm_host.is_empty() {
        headers.push(("Host".to_string(), norm_host.clone().into_bytes()));
    }
    Parsed::Complete(
        Request {
            method,
            target,
            version,
            host: norm_host,
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
            Parsed::Error(why) => why.status(),
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

    fn reason(s: &str) -> Option<RejectReason> {
        match parse(s) {
            Parsed::Error(why) => Some(why),
            _ => None,
        }
    }

    /// Each refusal names its reason; the reason decides the status and the counter.
    #[test]
    fn refusals_are_typed() {
        use RejectCounter as C;
        use RejectReason as R;
        for (req, why) in [
            ("GET / HTTP/1.1\r\n\r\n", R::MissingHost),
            ("GET / HTTP/1.1\nHost: x\n\n", R::BareLf),
            ("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", R::DuplicateHost),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", R::InvalidHost),
            ("GET http://a b/ HTTP/1.1\r\nHost: x\r\n\r\n", R::Malformed),
            ("GET http://a:x/ HTTP/1.1\r\nHost: x\r\n\r\n", R::InvalidAuthority),
            ("GET http://y/ HTTP/1.1\r\nHost: x\r\n\r\n", R::ForeignAuthority),
            ("GET x HTTP/1.1\r\nHost: x\r\n\r\n", R::TargetForm),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent_Length: 1\r\n\r\n", R::UnderscoreFraming),
            ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", R::ChunkedHttp10),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", R::LengthAndChunked),
            ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", R::UnsupportedCoding),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", R::DuplicateLength),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", R::InvalidLength),
        ] {
            assert_eq!(reason(req), Some(why), "{req:?}");
        }
        assert_eq!(R::MissingHost.verdict(), (400, C::Malformed));
        assert_eq!(R::LengthAndChunked.verdict(), (400, C::Framing));
        assert_eq!(R::MalformedBody.verdict(), (400, C::Framing));
        assert_eq!(R::TooManyHeaders.verdict(), (431, C::HeadTooLarge));
        assert_eq!(R::HeadTooLargeForSegment.verdict(), (431, C::HeadTooLarge));
        assert_eq!(R::TargetTooLongForSegment.verdict(), (414, C::LineTooLong));
        assert_eq!(R::BodyTooLarge.verdict(), (413, C::BodyTooLarge));
        assert_eq!(R::BareLf.to_string(), R::BareLf.message());
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
    fn framing_is_byte_exact() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\u{a0}\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\u{2000}\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nX_Custom: 1\r\n\r\n"),
            0
        );
        let Parsed::Complete(r, _) = parse(
            "GET / HTTP/1.1\r\nHost: x\r\nProxy_Connection: k\r\nX_Forwarded_For: 1\r\nX_Ok: 1\r\n\r\n",
        ) else {
            panic!()
        };
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Host", "X_Ok"]);
    }

    #[test]
    fn host_is_validated_and_normalised() {
        for bad in [
            "",
            "a b",
            "evil.test/x?",
            "a@b",
            "x:8o",
            "[zz]",
            "x:123456",
            "%zz",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(status(&req), 400, "{bad:?}");
        }
        for (good, norm) in [
            ("Example.TEST", "example.test"),
            ("x:80", "x"),
            ("x:", "x"),
            ("x:8080", "x:8080"),
            ("x:08080", "x:8080"),
            ("x:0", "x:0"),
            ("10.0.0.1:81", "10.0.0.1:81"),
            ("[::1]:80", "[::1]"),
            ("[::1]:8080", "[::1]:8080"),
            ("a%41-b_c~", "a%41-b_c~"),
        ] {
            let Parsed::Complete(r, _) = parse(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n"))
            else {
                panic!("{good:?}")
            };
            assert_eq!(r.host, norm);
            assert_eq!(r.headers[0].1, norm.as_bytes());
        }
        let Parsed::Complete(r, _) = parse("GET HTTP://X:80?q HTTP/1.1\r\nHost: x\r\n\r\n") else {
            panic!()
        };
        assert_eq!((r.host.as_str(), r.target.as_str()), ("x", "/?q"));
        let Parsed::Complete(r, _) = parse("GET http://a.test/p HTTP/1.0\r\n\r\n") else {
            panic!()
        };
        assert_eq!(r.host, "a.test");
        assert_eq!(r.headers, [("Host".to_string(), b"a.test".to_vec())]);
    }

    #[test]
    fn chunk_lines_follow_the_abnf() {
        assert_eq!(chunk_size_line(b"1a"), Some(26));
        assert_eq!(chunk_size_line(b"0"), Some(0));
        assert_eq!(chunk_size_line(b"5 ; a=b ;c; d = \"x \\\" y\" "), Some(5));
        for bad in [
            &b""[..],
            b"g",
            b" 5",
            b"5;",
            b"5;a\rb",
            b"5;a=\0",
            b"5\r",
            b"5;a=\"unterminated",
            b"5;a=b c",
            b"5 6",
            b"1234567890123456",
        ] {
            assert_eq!(chunk_size_line(bad), None, "{bad:?}");
        }
        assert!(trailer_field_line(b"X-Sum: abc"));
        assert!(trailer_field_line(b"X-Sum:"));
        for bad in [
            &b"GET /x HTTP/1.1"[..],
            b" folded",
            b"X: a\rb",
            b": v",
            b"X\0: v",
        ] {
            assert!(!trailer_field_line(bad), "{bad:?}");
        }
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

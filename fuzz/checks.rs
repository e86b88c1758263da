//! The fuzz oracles, shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/*.rs`) and by the
//! regression test that replays `fuzz/regressions/` and `fuzz/seeds/` under `cargo test`
//! (`tests/fuzz_regressions.rs`). Each function takes the raw fuzzer input and panics when an
//! invariant does not hold; returning normally means the input is fine.
//!
//! Included with `#[path]` from both places (no crate of its own: the regression test must not
//! depend on `libfuzzer-sys`).

#![allow(dead_code)]

use common::http::CacheOutcome;
use common::pool::{check_layout, MAX_SEGMENT_SIZE, MAX_SLOTS, MIN_SEGMENT_SIZE};
use common::protocol::{BodyLen, Doorbell, RequestHead, ResponseHead, DOORBELL_LEN};
use common::request::{parse_head, ClientBody, Limits, Parsed, MAX_REQUEST_LINE};

/// The limits the proxy uses by default.
pub const LIMITS: Limits = Limits {
    max_header_bytes: 16384,
    max_headers: 100,
};

/// `pool.rs` private constants (pool header and each segment header are 256 bytes).
const POOL_HEADER_SIZE: u128 = 256;
const SEGMENT_HEADER_SIZE: u128 = 256;

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `request_head`: `parse_head` never panics; a `Complete` answer is consistent with the bytes
/// and safe to forward (no CR/LF/NUL can reach the request `cached` rebuilds, no hop-by-hop
/// header is forwarded, no framing ambiguity survives), and re-serialising what it forwards
/// parses to the same request (a next hop with the same rules sees the same message).
pub fn request_head(data: &[u8]) {
    let parsed = parse_head(&LIMITS, data);
    let (req, head_len) = match parsed {
        Parsed::Complete(req, n) => (req, n),
        Parsed::Partial => {
            assert!(
                data.len() <= LIMITS.max_header_bytes,
                "Partial for {} bytes, over max_header_bytes",
                data.len()
            );
            return;
        }
        Parsed::Error(why) => {
            let code = why.status();
            assert!(
                matches!(code, 400 | 414 | 431),
                "unexpected error status {code} ({why})"
            );
            assert!(!why.message().is_empty());
            return;
        }
    };
    let head = &data[..head_len.min(data.len())];
    assert!(
        head_len <= data.len(),
        "head_len {head_len} > input {}",
        data.len()
    );
    assert!(
        head_len <= LIMITS.max_header_bytes,
        "head_len {head_len} over the limit"
    );
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "head does not end with CRLF CRLF: {head:?}"
    );
    for (i, &b) in head.iter().enumerate() {
        assert!(
            b != b'\n' || (i > 0 && head[i - 1] == b'\r'),
            "bare LF at {i} accepted"
        );
    }
    let line = head.iter().position(|&b| b == b'\n').unwrap();
    assert!(
        line <= MAX_REQUEST_LINE,
        "request line of {line} bytes accepted"
    );

    // What the worker takes from it.
    assert!(
        !req.method.is_empty() && req.method.bytes().all(is_tchar),
        "method {:?}",
        req.method
    );
    assert!(
        req.target.starts_with('/') || (req.target == "*" && req.method == "OPTIONS"),
        "target {:?}",
        req.target
    );
    assert!(
        req.target.bytes().all(|b| b > 0x20 && b != 0x7f),
        "target with space or control bytes: {:?}",
        req.target
    );
    assert!(matches!(req.version, 10 | 11), "version {}", req.version);
    // The host (cache key) is a normal form: normalising it again changes nothing.
    assert!(
        req.host.is_empty()
            || common::request::normalize_host(req.host.as_bytes(), "80").as_deref()
                == Some(req.host.as_str()),
        "host {:?} is not in normal form",
        req.host
    );
    assert!(req.headers.len() <= LIMITS.max_headers);
    for (name, value) in &req.headers {
        assert!(
            !name.is_empty() && name.bytes().all(is_tchar),
            "header name {name:?}"
        );
        assert!(
            value
                .iter()
                .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t'),
            "control byte in the value of {name}: {value:?}"
        );
        assert!(
            !common::http::HOP_BY_HOP
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name)),
            "hop-by-hop header {name} forwarded"
        );
        assert!(!name.eq_ignore_ascii_case("expect"), "Expect forwarded");
    }
    let count = |n: &str| {
        req.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .count()
    };
    assert!(count("host") <= 1, "several Host headers forwarded");
    assert!(
        count("content-length") <= 1,
        "several Content-Length headers forwarded"
    );
    if let ClientBody::Length(n) = req.body {
        assert!(n > 0, "Length(0) instead of None");
        if let Some((_, v)) = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            assert_eq!(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok()),
                Some(n)
            );
        }
    }
    if req.body == ClientBody::Chunked {
        assert_eq!(
            count("content-length"),
            0,
            "chunked body with a Content-Length"
        );
    }
    if req.version == 10 && req.keep_alive {
        let raw = String::from_utf8_lossy(head).to_ascii_lowercase();
        assert!(
            raw.contains("keep-alive"),
            "HTTP/1.0 keep-alive without asking"
        );
    }

    // The head alone parses the same (trailing body bytes never change the head), and no
    // shorter prefix is already complete.
    assert_eq!(
        parse_head(&LIMITS, head),
        Parsed::Complete(req.clone(), head_len)
    );
    assert!(
        !matches!(
            parse_head(&LIMITS, &head[..head_len - 1]),
            Parsed::Complete(..)
        ),
        "a prefix of the head is complete"
    );

    // Re-serialise what is forwarded (plus framing) and parse again: same request.
    let mut out = format!(
        "{} {} HTTP/1.{}\r\n",
        req.method,
        req.target,
        req.version - 10
    )
    .into_bytes();
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    // `Connection: host` or `Connection: content-length` may have removed what the next hop
    // needs: add it back, as `cached` does when it builds the upstream request.
    let mut want_headers = req.headers.clone();
    let mut extra = Vec::new();
    if count("host") == 0 {
        extra.push(("Host".to_string(), b"fuzz".to_vec()));
    }
    match req.body {
        ClientBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientBody::Length(n) if count("content-length") == 0 => {
            extra.push(("Content-Length".to_string(), n.to_string().into_bytes()))
        }
        _ => {}
    }
    for (name, value) in &extra {
        out.extend_from_slice(format!("{name}: ").as_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    want_headers.extend(extra);
    out.extend_from_slice(b"\r\n");
    if out.len() > LIMITS.max_header_bytes
        || want_headers.len() + usize::from(req.body == ClientBody::Chunked) > LIMITS.max_headers
    {
        // "Name:value" became "Name: value", or Host was added to 100 fields: may no longer
        // fit the limits; nothing to compare.
        return;
    }
    match parse_head(&LIMITS, &out) {
        Parsed::Complete(again, n) => {
            assert_eq!(n, out.len());
            assert_eq!(again.method, req.method);
            assert_eq!(again.target, req.target);
            assert_eq!(again.version, req.version);
            assert_eq!(
                again.headers, want_headers,
                "forwarded headers change on a second pass"
            );
            assert_eq!(again.body, req.body, "framing changes on a second pass");
        }
        other => panic!(
            "forwarded request {:?} does not parse again: {other:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// `doorbell`: `Doorbell::decode` never panics, accepts only 32-byte messages, and what it
/// accepts re-encodes to exactly the same bytes (nothing in a message is ignored).
pub fn doorbell(data: &[u8]) {
    if let Ok(d) = Doorbell::decode(data) {
        assert_eq!(data.len(), DOORBELL_LEN);
        assert_eq!(
            &d.encode()[..],
            data,
            "decoded {d:?} re-encodes differently"
        );
    }
    // The other direction, with fields taken from the input.
    if data.len() >= 25 {
        let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        let d = Doorbell {
            kind: if data[0] & 1 == 0 {
                common::protocol::Kind::Request
            } else {
                common::protocol::Kind::Purge
            },
            index: u32_at(1),
            generation: u32_at(5),
            request_id: u64_at(9),
            pool_id: u64_at(17),
        };
        assert_eq!(Doorbell::decode(&d.encode()), Ok(d));
    }
}

/// A body framing's canonical length field: the encoder writes 0 unless the length is exact.
fn canonical_body(b: &mut [u8], at: usize) {
    if b.len() >= at + 9 && b[at] != 1 {
        b[at + 1..at + 9].fill(0);
    }
}

/// `stream_heads`: `RequestHead::decode` and `ResponseHead::decode` never panic and never
/// allocate beyond the input; what they accept re-encodes to the same bytes (the decoder once
/// ignored the length beside a body framed `None`/`Unknown`, `regressions/stream_heads`; it now
/// rejects it, so `canonical_body` must change nothing on accepted input) — and decoding the
/// re-encoding gives the same head.
pub fn stream_heads(data: &[u8]) {
    if let Ok(h) = RequestHead::decode(data) {
        let again = h.encode();
        assert_eq!(RequestHead::decode(&again).as_ref(), Ok(&h));
        assert!(!h.method.is_empty() && h.method.bytes().all(|c| c.is_ascii_graphic()));
        assert!(matches!(h.version, 10 | 11));
        // method, target, client: 4-byte length prefixes; then version (1 byte).
        let mut want = data.to_vec();
        let at = 4 + 4 + h.method.len() + 4 + h.target.len() + 1 + 4 + h.client.len();
        canonical_body(&mut want, at);
        assert_eq!(again, want, "request head {h:?} re-encodes differently");
    }
    if let Ok(h) = ResponseHead::decode(data) {
        let again = h.encode();
        assert_eq!(ResponseHead::decode(&again).as_ref(), Ok(&h));
        assert!((100..=999).contains(&h.status));
        let mut want = data.to_vec();
        canonical_body(&mut want, 4 + 2);
        assert_eq!(again, want, "response head {h:?} re-encodes differently");
    }
    // Any well-formed head built from the input round-trips.
    if data.len() >= 8 {
        let body = match data[0] % 3 {
            0 => BodyLen::None,
            1 => BodyLen::Exact(u64::from(data[1])),
            _ => BodyLen::Unknown,
        };
        let rest = &data[2..];
        let headers: Vec<(String, Vec<u8>)> = rest
            .chunks(5)
            .take(8)
            .map(|c| {
                (
                    String::from_utf8_lossy(&c[..c.len().min(2)]).into_owned(),
                    c.to_vec(),
                )
            })
            .collect();
        let r = RequestHead {
            method: "GET".into(),
            target: String::from_utf8_lossy(rest).into_owned(),
            version: 10 + (data[1] & 1),
            client: "127.0.0.1".into(),
            body,
            headers: headers.clone(),
        };
        assert_eq!(RequestHead::decode(&r.encode()), Ok(r));
        let s = ResponseHead {
            status: 100 + u16::from(data[1]) * 3,
            body,
            outcome: CacheOutcome::ALL[usize::from(data[2]) % CacheOutcome::ALL.len()],
            ttl_ms: u32::from(data[3]) << 8,
            upstream_status: u16::from(data[4]),
            site: u16::from(data[5]) << 8 | u16::from(data[3]),
            follow: None,
            headers,
        };
        assert_eq!(ResponseHead::decode(&s.encode()), Ok(s));
    }
}

/// The layout rule written independently, with arithmetic that cannot overflow.
fn layout_ok_reference(
    segments: u32,
    slots: u32,
    segment_size: u64,
    data_offset: u64,
    len: u64,
) -> bool {
    let (segments, segment_size, data_offset, len) = (
        u128::from(segments),
        u128::from(segment_size),
        u128::from(data_offset),
        u128::from(len),
    );
    let usize_max = usize::MAX as u128;
    segment_size <= usize_max
        && data_offset <= usize_max
        && len <= usize_max
        && (2..=MAX_SLOTS as u32).contains(&slots)
        && (MIN_SEGMENT_SIZE as u128..=MAX_SEGMENT_SIZE as u128).contains(&segment_size)
        && segments >= 1
        && data_offset >= POOL_HEADER_SIZE + segments * SEGMENT_HEADER_SIZE
        && data_offset + segments * segment_size == len
}

/// `pool_layout`: `check_layout` over header fields taken from the input agrees with an
/// independent statement of the rule, and an accepted layout keeps every header, segment and
/// chunk slot inside the mapping without overlap.
pub fn pool_layout(data: &[u8]) {
    let mut b = [0u8; 33];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let segments = u32_at(0);
    let slots = u32_at(4);
    let segment_size = u64_at(8);
    let data_offset = u64_at(16);
    // Bit 0 of the mode byte: derive the length from the fields (what an honest creator
    // writes), so the accepting path is reached; otherwise take it from the input.
    let len = if b[32] & 1 == 1 {
        data_offset.wrapping_add(u64::from(segments).wrapping_mul(segment_size))
    } else {
        u64_at(24)
    };
    let (Ok(seg_size), Ok(offset), Ok(len)) = (
        usize::try_from(segment_size),
        usize::try_from(data_offset),
        usize::try_from(len),
    ) else {
        return;
    };
    let got = check_layout(segments, slots, seg_size, offset, len);
    let want = layout_ok_reference(segments, slots, segment_size, data_offset, len as u64);
    assert_eq!(
        got.is_ok(),
        want,
        "check_layout({segments}, {slots}, {seg_size}, {offset}, {len}) = {got:?}, reference says {want}"
    );
    if got.is_err() {
        return;
    }
    // What `Pool` derives from an accepted header and then indexes with.
    let slot_size = (seg_size / slots as usize) & !63;
    assert!(slot_size >= 64, "empty chunk slots");
    assert!(
        slot_size * slots as usize <= seg_size,
        "slots overflow their segment"
    );
    let headers_end = POOL_HEADER_SIZE as usize + segments as usize * SEGMENT_HEADER_SIZE as usize;
    assert!(
        headers_end <= offset,
        "segment headers overlap the data area"
    );
    for index in [0, segments / 2, segments - 1] {
        let data_start = offset + index as usize * seg_size;
        let last_slot_end = data_start + (slots as usize - 1) * slot_size + slot_size;
        assert!(data_start >= headers_end);
        assert!(
            last_slot_end <= len,
            "segment {index} slot end {last_slot_end} beyond {len}"
        );
        assert!(data_start + seg_size <= len);
    }
}

/// The caching rules both daemons use.
use common::cache_policy as policy;

/// Latest instant an accepted HTTP date may name: 9999-12-31 23:59:60 (10000-01-01 00:00:00).
const YEAR_10000: u64 = 253_402_300_800;

/// One header value through the date parser: no panic; an accepted date lies in 1970..=9999
/// and survives formatting and parsing again.
fn date_oracle(v: &str) {
    use common::http::{http_date, parse_http_date};
    use std::time::UNIX_EPOCH;
    if let Some(t) = parse_http_date(v) {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .expect("an accepted date is after 1970")
            .as_secs();
        assert!(secs < YEAR_10000, "{v:?} accepted as {secs} s");
        let s = http_date(t);
        assert_eq!(
            parse_http_date(&s),
            Some(t),
            "{v:?} -> {s:?} does not parse back"
        );
    }
}

/// `policy`: dates, header values and the cache-policy functions never panic, whatever the
/// request and response headers and numbers, and what they answer is consistent.
///
/// Input: 16 bytes of numbers (status, body length, clock, delay, heuristic floor, a time to
/// format), then header lines `name: value` — request headers, then after a line `--` the
/// response headers.
pub fn policy(data: &[u8]) {
    use common::http::{http_date, parse_http_date, safe_path_segments, tokens, Headers};
    use policy::*;
    use std::time::{Duration, UNIX_EPOCH};

    let mut n = [0u8; 16];
    let k = data.len().min(16);
    n[..k].copy_from_slice(&data[..k]);
    let text = &data[k..];
    let u16_at = |i: usize| u16::from_le_bytes([n[i], n[i + 1]]);
    let status = 100 + u16_at(0) % 500;
    let len = u64::from(u16_at(2)) >> (n[15] % 8);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(u16_at(4)) * 997);
    let delay = Duration::from_millis(u64::from(u16_at(6)) * 31);
    let floor = Duration::from_secs(u64::from(n[8]) * 60);

    // Formatting any representable instant up to the year 9999 parses back to it.
    let secs = u64::from_le_bytes(n[8..16].try_into().unwrap()) % YEAR_10000;
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    assert_eq!(parse_http_date(&http_date(t)), Some(t), "{secs} s");

    let mut req: Headers = Vec::new();
    let mut resp: Headers = Vec::new();
    let mut in_resp = false;
    for line in text.split(|&b| b == b'\n') {
        if line == b"--" {
            in_resp = true;
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        let value = line[colon + 1..].trim_ascii().to_vec();
        date_oracle(&String::from_utf8_lossy(&value));
        let _ = tokens(&value);
        let _ = safe_path_segments(&String::from_utf8_lossy(&value));
        if in_resp {
            resp.push((name, value));
        } else {
            req.push((name, value));
        }
    }

    let rules = RequestRules::of(&req);
    let age = initial_age(&resp, now, now + delay);
    assert!(age >= delay, "age below the transit delay");
    for method in ["GET", "HEAD"] {
        if let Some(s) = storable(method, &req, status, &resp, now, floor, &[]) {
            assert_eq!(method, "GET", "HEAD answers are stored");
            let _ = usable(age, s.lifetime, s.must_revalidate, s.no_cache, &rules);
            let _ = s.lifetime.saturating_sub(age);
            // A stored object ages on: the corrected age plus any resident time saturates.
            let later = age.saturating_add(Duration::MAX);
            let _ = usable(later, s.lifetime, s.must_revalidate, s.no_cache, &rules);
        }
    }
    let _ = usable(age, Duration::MAX, false, false, &rules);
    let _ = usable(Duration::MAX, Duration::ZERO, false, false, &rules);
    let _ = not_modified(&req, &resp);
    let _ = precondition_failed(&req, &resp);
    match range(&req, &resp, len) {
        RangeAnswer::Partial(first, last) => {
            assert!(
                first <= last && last < len,
                "range {first}-{last} of a {len}-byte body"
            );
        }
        RangeAnswer::Full | RangeAnswer::Unsatisfiable => {}
    }
    let vary = all_tokens(&resp, "vary");
    let _ = vary_key(&vary, &req);
    let mut stored = resp.clone();
    update_from_304(&mut stored, &req);
    for (k, _) in &stored {
        assert!(
            !k.eq_ignore_ascii_case("content-length") || resp.iter().any(|(r, _)| r == k),
            "a 304 brought in {k}"
        );
    }
}

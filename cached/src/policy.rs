//! HTTP caching rules (RFC 9111, with RFC 9110 for conditionals and ranges), as pure
//! functions over headers and times so they can be tested without a network:
//! what may be stored, for how long it is fresh, its current age, what the request's
//! `Cache-Control` allows, the `Vary` secondary key, conditional requests and ranges.

use common::http::{parse_http_date, tokens};
use std::time::{Duration, SystemTime};

pub type Headers = Vec<(String, Vec<u8>)>;

/// First value of a header (case-insensitive).
pub fn header<'a>(h: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn header_str(h: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    header(h, name).map(|v| String::from_utf8_lossy(v).trim().to_string())
}

/// All comma-separated tokens of every field named `name` (list and multi-line forms).
pub fn all_tokens(h: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    h.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| tokens(v))
        .collect()
}

/// Parsed `Cache-Control` directives (names lower-cased; arguments unquoted).
#[derive(Clone, Debug, Default)]
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    pub fn of(h: &[(String, Vec<u8>)]) -> Directives {
        Directives(
            all_tokens(h, "cache-control")
                .into_iter()
                .map(|t| match t.split_once('=') {
                    Some((k, v)) => (
                        k.trim().to_string(),
                        Some(v.trim().trim_matches('"').to_string()),
                    ),
                    None => (t, None),
                })
                .collect(),
        )
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// A delta-seconds argument. An invalid argument makes the directive count as
    /// present with value 0 (the conservative reading, RFC 9111 §1.2.2 / §4.2.1).
    pub fn seconds(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| match v {
                Some(v) => v.parse::<u64>().unwrap_or(
                    if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
                        u64::MAX
                    } else {
                        0
                    },
                ),
                None => 0,
            })
    }

    /// `max-stale` with no argument means "any staleness".
    pub fn max_stale(&self) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == "max-stale").map(|(_, v)| {
            v.as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Statuses that are heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses whose semantics we understand well enough to store (RFC 9111 §3).
fn understood(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 451 | 501
    )
}

/// The freshness decision for a response we received at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storable {
    /// Freshness lifetime (may be zero: stored, but always revalidated before use).
    pub lifetime: Duration,
    /// The response must be revalidated once stale (`must-revalidate`, `proxy-revalidate`,
    /// `s-maxage`) and on every use when `no-cache`.
    pub must_revalidate: bool,
    pub no_cache: bool,
    /// `stale-while-revalidate` (RFC 5861 §3; 0 when absent).
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` (RFC 5861 §4; 0 when absent).
    pub stale_if_error: Duration,
}

/// May a shared cache store this response to this request (RFC 9111 §3), and how fresh is
/// it (§4.2.1, heuristics per §4.2.2)? `None` means: do not store. `heuristic_floor` is the
/// operator's least heuristic lifetime (0: only 10 % of the time since `Last-Modified`); it
/// applies only where a heuristic is allowed, never to answers without freshness or validator.
pub fn storable(
    method: &str,
    req: &[(String, Vec<u8>)],
    status: u16,
    resp: &[(String, Vec<u8>)],
    now: SystemTime,
    heuristic_floor: Duration,
) -> Option<Storable> {
    if method != "GET" || !understood(status) {
        return None;
    }
    let rq = Directives::of(req);
    let cc = Directives::of(resp);
    if rq.has("no-store") || cc.has("no-store") || cc.has("private") {
        return None;
    }
    if all_tokens(resp, "vary").iter().any(|t| t == "*") {
        return None;
    }
    let explicit = cc
        .seconds("s-maxage")
        .or_else(|| cc.seconds("max-age"))
        .map(Duration::from_secs)
        .or_else(|| {
            let expires = header_str(resp, "expires")?;
            // An invalid Expires (e.g. "0") means "already expired".
            let Some(expires) = parse_http_date(&expires) else {
                return Some(Duration::ZERO);
            };
            let date = header_str(resp, "date")
                .and_then(|d| parse_http_date(&d))
                .unwrap_or(now);
            Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
        });
    if header(req, "authorization").is_some()
        && !(cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate"))
    {
        return None;
    }
    let has_validator = header(resp, "etag").is_some() || header(resp, "last-modified").is_some();
    let lifetime = match explicit {
        Some(l) => l,
        None if cc.has("public") || heuristically_cacheable(status) => {
            // Heuristic freshness: 10% of the time since Last-Modified, at most a day.
            let lm = header_str(resp, "last-modified").and_then(|d| parse_http_date(&d));
            let date = header_str(resp, "date")
                .and_then(|d| parse_http_date(&d))
                .unwrap_or(now);
            match lm.and_then(|lm| date.duration_since(lm).ok()) {
                Some(d) => (d / 10)
                    .min(Duration::from_secs(86_400))
                    .max(heuristic_floor),
                None if has_validator || cc.has("public") => heuristic_floor,
                None => return None,
            }
        }
        None => return None,
    };
    if lifetime.is_zero() && !has_validator {
        // Nothing to revalidate with and never fresh: storing it gains nothing.
        return None;
    }
    Some(Storable {
        lifetime,
        must_revalidate: cc.has("must-revalidate")
            || cc.has("proxy-revalidate")
            || cc.has("s-maxage"),
        no_cache: cc.has("no-cache"),
        stale_while_revalidate: Duration::from_secs(
            cc.seconds("stale-while-revalidate").unwrap_or(0),
        ),
        stale_if_error: Duration::from_secs(cc.seconds("stale-if-error").unwrap_or(0)),
    })
}

/// What a stored answer allows once stale, besides revalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// How long past its lifetime the answer is (zero while fresh).
    pub stale_by: Duration,
    pub must_revalidate: bool,
    pub no_cache: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

impl Staleness {
    /// RFC 9111 §4.2.4: no stale answer where `must-revalidate`, `proxy-revalidate`,
    /// `s-maxage` (all in `must_revalidate`) or `no-cache` forbid it.
    fn allowed(&self) -> bool {
        !self.must_revalidate && !self.no_cache
    }

    /// May it be answered at once while one background refresh runs (RFC 5861 §3)? Not when
    /// the request itself asks for a fresh or bounded-age answer.
    pub fn while_revalidating(&self, rules: &RequestRules) -> bool {
        self.allowed()
            && !rules.no_cache
            && rules.max_age.is_none()
            && rules.min_fresh.is_none()
            && self.stale_by < self.stale_while_revalidate
    }

    /// May it be answered instead of the origin's error (RFC 5861 §4), within its own
    /// `stale-if-error` window or, without one, the operator's `grace`?
    pub fn on_error(&self, grace: Duration) -> bool {
        let window = if self.stale_if_error.is_zero() {
            grace
        } else {
            self.stale_if_error
        };
        self.allowed() && self.stale_by < window
    }
}

/// Origin statuses that count as the origin failing (RFC 5861 §4).
pub fn is_origin_error(status: u16) -> bool {
    matches!(status, 500 | 502 | 503 | 504)
}

/// `corrected_initial_age` of RFC 9111 §4.2.3 for a response requested at `request_time`
/// and received at `response_time`.
pub fn initial_age(
    resp: &[(String, Vec<u8>)],
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let date = header_str(resp, "date")
        .and_then(|d| parse_http_date(&d))
        .unwrap_or(response_time);
    let apparent = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let age_value = header_str(resp, "age")
        .and_then(|a| a.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    // An origin may send any `Age` (up to u64::MAX seconds): saturate, never overflow.
    apparent.max(age_value.saturating_add(delay))
}

/// What the request's own `Cache-Control` (and `Pragma`) demands of a stored response.
#[derive(Clone, Debug, Default)]
pub struct RequestRules {
    pub no_cache: bool,
    pub max_age: Option<u64>,
    pub min_fresh: Option<u64>,
    pub max_stale: Option<u64>,
    pub only_if_cached: bool,
}

impl RequestRules {
    pub fn of(req: &[(String, Vec<u8>)]) -> RequestRules {
        let cc = Directives::of(req);
        // Pragma: no-cache counts only without Cache-Control (RFC 9111 §5.4).
        let pragma = cc.is_empty() && all_tokens(req, "pragma").iter().any(|t| t == "no-cache");
        RequestRules {
            no_cache: cc.has("no-cache") || pragma,
            max_age: cc.seconds("max-age"),
            min_fresh: cc.seconds("min-fresh"),
            max_stale: cc.max_stale(),
            only_if_cached: cc.has("only-if-cached"),
        }
    }
}

/// How a stored response may be used for a request (RFC 9111 §4, §5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Fresh enough: serve it.
    Fresh,
    /// Stale, but the request's max-stale allows it.
    StaleAllowed,
    /// Must be revalidated with the origin first.
    Revalidate,
}

pub fn usable(
    age: Duration,
    lifetime: Duration,
    must_revalidate: bool,
    no_cache: bool,
    rules: &RequestRules,
) -> Use {
    if no_cache || rules.no_cache {
        return Use::Revalidate;
    }
    let age_s = age.as_secs();
    // Sub-second precision: `max-age=0` asks for revalidation of anything not brand new.
    if rules.max_age.is_some_and(|m| age > Duration::from_secs(m)) {
        return Use::Revalidate;
    }
    let fresh_left = lifetime.as_secs().saturating_sub(age_s);
    if lifetime > age {
        if rules.min_fresh.is_some_and(|m| fresh_left < m) {
            return Use::Revalidate;
        }
        return Use::Fresh;
    }
    let stale_by = age_s.saturating_sub(lifetime.as_secs());
    if !must_revalidate && rules.max_stale.is_some_and(|m| stale_by <= m) {
        return Use::StaleAllowed;
    }
    Use::Revalidate
}

/// Normalises one request header value for the `Vary` secondary key: the value's bytes
/// exactly (case included: `X-Token: SecretABC` is not `secretabc`), with only the list
/// syntax normalised (OWS around each comma-separated element trimmed, empty elements
/// dropped). Bytes outside visible ASCII, and `%`, are written `%XX`, so two different
/// values never share a key.
fn normalise(v: &[u8], out: &mut String) {
    let mut first = true;
    for element in v.split(|&b| b == b',') {
        let mut e = element;
        while let [b' ' | b'\t', rest @ ..] = e {
            e = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = e {
            e = rest;
        }
        if e.is_empty() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        for &b in e {
            if b.is_ascii_graphic() && b != b'%' {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
}

/// Secondary key: the named request headers' normalised values (all fields of each name).
pub fn vary_key(vary: &[String], req: &[(String, Vec<u8>)]) -> String {
    let mut key = String::new();
    for name in vary {
        key.push_str(name);
        key.push('=');
        let mut first = true;
        for (_, v) in req.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)) {
            // Several fields of one name are one comma-separated list.
            let mut one = String::new();
            normalise(v, &mut one);
            if one.is_empty() {
                continue;
            }
            if !first {
                key.push(',');
            }
            first = false;
            key.push_str(&one);
        }
        key.push('\n');
    }
    key
}

/// The entity tags of every `name` field (case preserved: tags are case-sensitive).
fn etag_list(h: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    h.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// Entity tags compare weakly for If-None-Match (RFC 9110 §8.8.3.2).
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// Strong comparison (If-Match, If-Range): both strong and equal.
fn strong_eq(a: &str, b: &str) -> bool {
    !a.starts_with("W/") && !b.starts_with("W/") && a.trim() == b.trim()
}

/// RFC 9110 §13.2.2 for GET/HEAD on a stored response: `true` if the answer is `304`.
pub fn not_modified(req: &[(String, Vec<u8>)], resp: &[(String, Vec<u8>)]) -> bool {
    let etag = header_str(resp, "etag");
    if header(req, "if-none-match").is_some() {
        let list = etag_list(req, "if-none-match");
        return list
            .iter()
            .any(|t| t == "*" || etag.as_deref().is_some_and(|e| weak_eq(t, e)));
    }
    let ims = header_str(req, "if-modified-since").and_then(|d| parse_http_date(&d));
    let lm = header_str(resp, "last-modified").and_then(|d| parse_http_date(&d));
    match (ims, lm) {
        (Some(ims), Some(lm)) => lm <= ims,
        _ => false,
    }
}

/// `If-Match`/`If-Unmodified-Since` failing on a stored response: `true` means 412.
pub fn precondition_failed(req: &[(String, Vec<u8>)], resp: &[(String, Vec<u8>)]) -> bool {
    let etag = header_str(resp, "etag");
    if header(req, "if-match").is_some() {
        let list = etag_list(req, "if-match");
        return !list
            .iter()
            .any(|t| t == "*" || etag.as_deref().is_some_and(|e| strong_eq(t, e)));
    }
    let ius = header_str(req, "if-unmodified-since").and_then(|d| parse_http_date(&d));
    let lm = header_str(resp, "last-modified").and_then(|d| parse_http_date(&d));
    matches!((ius, lm), (Some(ius), Some(lm)) if lm > ius)
}

/// The outcome of a `Range` header against a stored body of `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No range, a multi-range, or an `If-Range` that does not match: the whole body (200).
    Full,
    /// One satisfiable range, inclusive.
    Partial(u64, u64),
    /// 416.
    Unsatisfiable,
}

pub fn range(req: &[(String, Vec<u8>)], resp: &[(String, Vec<u8>)], len: u64) -> RangeAnswer {
    let Some(spec) = header_str(req, "range") else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = header_str(req, "if-range") {
        let matches = if if_range.starts_with('"') || if_range.starts_with("W/") {
            header_str(resp, "etag").is_some_and(|e| strong_eq(&if_range, &e))
        } else {
            let lm = header_str(resp, "last-modified").and_then(|d| parse_http_date(&d));
            parse_http_date(&if_range).is_some_and(|d| lm == Some(d))
        };
        if !matches {
            return RangeAnswer::Full;
        }
    }
    let Some(set) = spec.strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if set.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let (first, last) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(f), Ok(l)) if f <= l => (f, l.min(len.saturating_sub(1))),
        (Ok(_), Ok(_)) => return RangeAnswer::Full,
        (Ok(f), Err(_)) if b.is_empty() => (f, len.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        _ => return RangeAnswer::Full,
    };
    if len == 0 || first >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial(first, last)
}

/// Headers a `304` may not change in the stored response (RFC 9111 §3.2).
pub fn update_from_304(stored: &mut Headers, fresh: &[(String, Vec<u8>)]) {
    for (name, _) in fresh {
        let n = name.to_ascii_lowercase();
        if matches!(
            n.as_str(),
            "content-length" | "content-range" | "transfer-encoding"
        ) || common::http::HOP_BY_HOP.contains(&n.as_str())
        {
            continue;
        }
        stored.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
    for (name, value) in fresh {
        let n = name.to_ascii_lowercase();
        if matches!(
            n.as_str(),
            "content-length" | "content-range" | "transfer-encoding"
        ) || common::http::HOP_BY_HOP.contains(&n.as_str())
        {
            continue;
        }
        stored.push((name.clone(), value.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::http::http_date;

    fn h(v: &[(&str, &str)]) -> Headers {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// `storable` without a heuristic floor.
    fn st(
        method: &str,
        req: &[(String, Vec<u8>)],
        status: u16,
        resp: &[(String, Vec<u8>)],
        t: SystemTime,
    ) -> Option<Storable> {
        storable(method, req, status, resp, t, Duration::ZERO)
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn storage_rules() {
        let t = now();
        assert!(st("GET", &[], 200, &h(&[("cache-control", "max-age=60")]), t).is_some());
        assert!(st("POST", &[], 200, &h(&[("cache-control", "max-age=60")]), t).is_none());
        assert!(st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "max-age=60, no-store")]),
            t
        )
        .is_none());
        assert!(st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "private, max-age=60")]),
            t
        )
        .is_none());
        assert!(st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "max-age=60"), ("vary", "Accept, *")]),
            t
        )
        .is_none());
        assert!(st(
            "GET",
            &h(&[("authorization", "x")]),
            200,
            &h(&[("cache-control", "max-age=60")]),
            t
        )
        .is_none());
        assert!(st(
            "GET",
            &h(&[("authorization", "x")]),
            200,
            &h(&[("cache-control", "public, max-age=60")]),
            t
        )
        .is_some());
        assert!(st(
            "GET",
            &h(&[("authorization", "x")]),
            200,
            &h(&[("cache-control", "s-maxage=60")]),
            t
        )
        .is_some());
        // No freshness, no validator: not stored. A validator alone: stored, always stale.
        assert!(st("GET", &[], 200, &[], t).is_none());
        assert_eq!(
            st("GET", &[], 200, &h(&[("etag", "\"a\"")]), t)
                .unwrap()
                .lifetime,
            Duration::ZERO
        );
        // 206 is not stored; an unknown status is not stored.
        assert!(st("GET", &[], 206, &h(&[("cache-control", "max-age=60")]), t).is_none());
        assert!(st("GET", &[], 299, &h(&[("cache-control", "max-age=60")]), t).is_none());
        assert!(st(
            "GET",
            &h(&[("cache-control", "no-store")]),
            200,
            &h(&[("cache-control", "max-age=60")]),
            t
        )
        .is_none());
    }

    #[test]
    fn freshness_precedence_and_heuristics() {
        let t = now();
        let life = |r: &[(&str, &str)]| st("GET", &[], 200, &h(r), t).map(|s| s.lifetime.as_secs());
        assert_eq!(
            life(&[("cache-control", "max-age=10, s-maxage=20")]),
            Some(20)
        );
        let date = http_date(t);
        let exp = http_date(t + Duration::from_secs(30));
        assert_eq!(
            life(&[
                ("cache-control", "max-age=10"),
                ("expires", &exp),
                ("date", &date)
            ]),
            Some(10)
        );
        assert_eq!(life(&[("expires", &exp), ("date", &date)]), Some(30));
        assert_eq!(life(&[("expires", "0"), ("etag", "\"x\"")]), Some(0));
        let lm = http_date(t - Duration::from_secs(1000));
        assert_eq!(life(&[("last-modified", &lm), ("date", &date)]), Some(100));
        // Heuristics only for heuristically cacheable statuses.
        assert!(st("GET", &[], 302, &h(&[("last-modified", &lm)]), t).is_none());
        assert_eq!(
            st("GET", &[], 302, &h(&[("cache-control", "max-age=5")]), t)
                .unwrap()
                .lifetime
                .as_secs(),
            5
        );
    }

    #[test]
    fn the_heuristic_floor_applies_only_where_heuristics_may() {
        let t = now();
        let floor = Duration::from_secs(600);
        let lm = http_date(t - Duration::from_secs(10));
        let life = |status, r: &[(&str, &str)]| {
            storable("GET", &[], status, &h(r), t, floor).map(|s| s.lifetime.as_secs())
        };
        assert_eq!(
            life(200, &[("last-modified", &lm), ("date", &http_date(t))]),
            Some(600)
        );
        assert_eq!(life(200, &[("etag", "\"e\"")]), Some(600));
        assert_eq!(
            life(200, &[]),
            None,
            "no validator, no freshness: never stored"
        );
        assert_eq!(
            life(302, &[("last-modified", &lm)]),
            None,
            "not heuristically cacheable"
        );
        assert_eq!(
            life(200, &[("cache-control", "max-age=5")]),
            Some(5),
            "explicit freshness wins"
        );
    }

    #[test]
    fn age_counts_the_origins_age_and_the_delay() {
        let t = now();
        let resp = h(&[("date", &http_date(t)), ("age", "30")]);
        assert_eq!(
            initial_age(&resp, t, t + Duration::from_secs(2)).as_secs(),
            32
        );
    }

    #[test]
    fn request_directives() {
        let day = Duration::from_secs(100);
        let r = |v: &str| RequestRules::of(&h(&[("cache-control", v)]));
        let fresh = Duration::from_secs(10);
        assert_eq!(
            usable(fresh, day, false, false, &RequestRules::default()),
            Use::Fresh
        );
        assert_eq!(
            usable(fresh, day, false, false, &r("no-cache")),
            Use::Revalidate
        );
        assert_eq!(
            usable(fresh, day, false, false, &r("max-age=5")),
            Use::Revalidate
        );
        assert_eq!(
            usable(fresh, day, false, false, &r("min-fresh=95")),
            Use::Revalidate
        );
        let stale = Duration::from_secs(110);
        assert_eq!(
            usable(stale, day, false, false, &r("max-stale=20")),
            Use::StaleAllowed
        );
        assert_eq!(
            usable(stale, day, false, false, &r("max-stale=5")),
            Use::Revalidate
        );
        assert_eq!(
            usable(stale, day, false, false, &r("max-stale")),
            Use::StaleAllowed
        );
        assert_eq!(
            usable(stale, day, true, false, &r("max-stale")),
            Use::Revalidate
        );
        assert!(RequestRules::of(&h(&[("pragma", "no-cache")])).no_cache);
        assert!(
            !RequestRules::of(&h(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-stale")
            ]))
            .no_cache
        );
        assert!(r("only-if-cached").only_if_cached);
    }

    #[test]
    fn vary_keys_normalise_lists_but_keep_values_byte_exact() {
        let vary = vec!["accept-encoding".to_string(), "accept-language".to_string()];
        let a = vary_key(
            &vary,
            &h(&[("Accept-Encoding", "gzip,  br "), ("Accept-Language", "en")]),
        );
        let b = vary_key(
            &vary,
            &h(&[
                ("accept-encoding", "gzip"),
                ("accept-encoding", "\tbr"),
                ("accept-language", "en"),
            ]),
        );
        let c = vary_key(&vary, &h(&[("accept-encoding", "gzip")]));
        assert_eq!(a, b, "list and whitespace normalisation");
        assert_ne!(a, c);
        let t = vec!["x-token".to_string()];
        let key = |v: &[u8]| vary_key(&t, &[("X-Token".to_string(), v.to_vec())]);
        assert_ne!(key(b"SecretABC"), key(b"secretabc"), "case is kept");
        assert_ne!(key(b"a b"), key(b"a  b"), "inner whitespace is kept");
        assert_ne!(key(b"\xff"), key(b"\xfe"), "non-UTF-8 bytes stay distinct");
        assert_ne!(key(b"%FF"), key(b"\xff"), "escapes cannot collide");
    }

    #[test]
    fn conditionals() {
        let resp = h(&[
            ("etag", "\"abc\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(not_modified(&h(&[("if-none-match", "W/\"abc\"")]), &resp));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", \"abc\"")]),
            &resp
        ));
        assert!(!not_modified(&h(&[("if-none-match", "\"x\"")]), &resp));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &h(&[
                ("if-none-match", "\"x\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &resp
        ));
        assert!(not_modified(
            &h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &resp
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &resp
        ));
        assert!(precondition_failed(&h(&[("if-match", "\"x\"")]), &resp));
        assert!(!precondition_failed(&h(&[("if-match", "\"abc\"")]), &resp));
        assert!(precondition_failed(&h(&[("if-match", "W/\"abc\"")]), &resp));
    }

    #[test]
    fn ranges() {
        let r = |v: &str| range(&h(&[("range", v)]), &[], 100);
        assert_eq!(r("bytes=0-9"), RangeAnswer::Partial(0, 9));
        assert_eq!(r("bytes=90-"), RangeAnswer::Partial(90, 99));
        assert_eq!(r("bytes=-10"), RangeAnswer::Partial(90, 99));
        assert_eq!(r("bytes=50-500"), RangeAnswer::Partial(50, 99));
        assert_eq!(r("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), RangeAnswer::Full);
        assert_eq!(r("items=0-1"), RangeAnswer::Full);
        let resp = h(&[("etag", "\"v1\"")]);
        assert_eq!(
            range(
                &h(&[("range", "bytes=0-1"), ("if-range", "\"v2\"")]),
                &resp,
                10
            ),
            RangeAnswer::Full
        );
        assert_eq!(
            range(
                &h(&[("range", "bytes=0-1"), ("if-range", "\"v1\"")]),
                &resp,
                10
            ),
            RangeAnswer::Partial(0, 1)
        );
    }

    /// Dates and numbers at or past every edge: refused or saturated, never a panic.
    #[test]
    fn hostile_dates_and_numbers_never_panic() {
        let t = now();
        let far = "Sun, 06 Nov 400000000000 08:49:37 GMT";
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let resp = h(&[("etag", "\"a\""), ("last-modified", lm)]);
        for name in ["if-modified-since", "if-unmodified-since"] {
            let req = h(&[(name, far)]);
            assert!(!not_modified(&req, &resp));
            assert!(!precondition_failed(&req, &resp));
        }
        let req = h(&[("range", "bytes=0-1"), ("if-range", far)]);
        assert_eq!(range(&req, &resp, 10), RangeAnswer::Full);
        let max = u64::MAX.to_string();
        for r in [
            h(&[("expires", far)]),
            h(&[("expires", lm), ("date", far)]),
            h(&[("last-modified", far)]),
            h(&[("last-modified", lm), ("date", far)]),
            h(&[("cache-control", &format!("max-age={max}")), ("age", &max)]),
            h(&[("cache-control", "s-maxage=99999999999999999999999")]),
        ] {
            let _ = st("GET", &[], 200, &r, t);
            let age = initial_age(&r, t, t + Duration::from_secs(5));
            let _ = usable(age, Duration::MAX, false, false, &RequestRules::default());
        }
        let resp = h(&[("age", &max)]);
        assert_eq!(
            initial_age(&resp, t, t + Duration::from_secs(5)).as_secs(),
            u64::MAX
        );
        let r = RequestRules::of(&h(&[(
            "cache-control",
            "max-age=99999999999999999999, min-fresh=99999999999999999999, max-stale=99999999999999999999",
        )]));
        let _ = usable(Duration::MAX, Duration::MAX, false, false, &r);
        assert_eq!(
            range(&h(&[("range", &format!("bytes={max}-{max}"))]), &[], 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(
            range(&h(&[("range", &format!("bytes=-{max}"))]), &[], 10),
            RangeAnswer::Partial(0, 9)
        );
    }

    #[test]
    fn a_304_updates_headers_but_not_the_length() {
        let mut stored = h(&[
            ("etag", "\"a\""),
            ("cache-control", "max-age=1"),
            ("content-length", "5"),
        ]);
        update_from_304(
            &mut stored,
            &h(&[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("connection", "close"),
            ]),
        );
        assert_eq!(header(&stored, "cache-control"), Some(&b"max-age=60"[..]));
        assert_eq!(header(&stored, "content-length"), Some(&b"5"[..]));
        assert!(header(&stored, "connection").is_none());
    }
}

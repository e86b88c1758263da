//! HTTP caching rules (RFC 9111, with RFC 9110 for conditionals and ranges), as pure
//! functions over headers and times so they can be tested without a network:
//! what may be stored, for how long it is fresh, its current age, what the request's
//! `Cache-Control` allows, the `Vary` secondary key, conditional requests and ranges, the
//! targeted fields of RFC 9213 (`CDN-Cache-Control`), `HEAD` freshening and the combining
//! of partial (`206`) pieces.
//!
//! It lives in `common` so that whoever serves a stored answer decides with the same code:
//! `cached` today, and a proxy worker serving hits itself once the cache is shared. It does
//! no I/O and keeps no state.

use crate::http::{header, parse_http_date, tokens, trim_ows, Headers};
use std::time::{Duration, SystemTime};

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

/// A directive's argument, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Arg {
    /// None given (`no-store`).
    None,
    /// A token, or a quoted-string's content unescaped.
    Value(String),
    /// Malformed: `max-age = 60` (spaces around `=`), `max-age=6 0`, an unclosed quote.
    /// The directive counts as present with the most conservative reading.
    Invalid,
}

/// What a field-list directive (`no-cache`, `private`) covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Absent,
    /// Unqualified (or malformed): the whole response.
    Whole,
    /// Qualified: only these fields (lower-cased), RFC 9111 §5.2.2.4 and §5.2.2.7.
    Fields(Vec<String>),
}

/// Parsed `Cache-Control` directives (RFC 9111 §5.2: `token [ "=" ( token /
/// quoted-string ) ]`, names lower-cased, quoted arguments unescaped). Every occurrence is
/// kept, so a duplicated directive can be read in its most conservative form (§4.2.1).
#[derive(Clone, Debug, Default)]
pub struct Directives(Vec<(String, Arg)>);

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The elements of a comma-separated list, commas inside quoted-strings kept, each
/// trimmed of OWS, empty ones dropped.
fn list_elements(v: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in v.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            out.push(trim_ows(&v[start..i]));
            start = i + 1;
        }
    }
    out.push(trim_ows(&v[start..]));
    out.retain(|e| !e.is_empty());
    out
}

/// A quoted-string at the start of `v`: its unescaped content and the bytes after it.
fn quoted_string(v: &[u8]) -> Option<(String, &[u8])> {
    let mut out = Vec::new();
    let mut it = v.strip_prefix(b"\"")?.iter().enumerate();
    while let Some((i, &b)) = it.next() {
        match b {
            b'"' => return Some((String::from_utf8_lossy(&out).into_owned(), &v[i + 2..])),
            b'\\' => out.push(*it.next()?.1),
            _ => out.push(b),
        }
    }
    None
}

/// One `cache-directive`.
fn directive(e: &[u8]) -> (String, Arg) {
    let name_len = e.iter().position(|&b| !is_tchar(b)).unwrap_or(e.len());
    let name = String::from_utf8_lossy(&e[..name_len]).to_ascii_lowercase();
    let arg = match &e[name_len..] {
        [] => Arg::None,
        [b'=', rest @ ..] => match rest {
            [b'"', ..] => match quoted_string(rest) {
                Some((v, [])) => Arg::Value(v),
                _ => Arg::Invalid,
            },
            _ if !rest.is_empty() && rest.iter().all(|&b| is_tchar(b)) => {
                Arg::Value(String::from_utf8_lossy(rest).into_owned())
            }
            _ => Arg::Invalid,
        },
        _ => Arg::Invalid,
    };
    (name, arg)
}

/// A delta-seconds (`1*DIGIT`): too large saturates (RFC 9111 §1.2.2); anything else,
/// `+5` included, is `None`.
fn delta_seconds(v: &str) -> Option<u64> {
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse::<u64>().unwrap_or(u64::MAX))
}

impl Directives {
    /// The `Cache-Control` directives of a request or a response.
    pub fn of(h: &[(String, Vec<u8>)]) -> Directives {
        Directives(
            h.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
                .flat_map(|(_, v)| list_elements(v))
                .map(directive)
                .filter(|(name, _)| !name.is_empty())
                .collect(),
        )
    }

    /// The directives that rule a response in this cache: those of the first of the
    /// `targeted` fields (RFC 9213, e.g. `CDN-Cache-Control`) present with a valid,
    /// non-empty value, else `Cache-Control`'s. `true` with a targeted field: the response's
    /// `Cache-Control` and `Expires` are then ignored (RFC 9213 §2.1).
    pub fn of_response(h: &[(String, Vec<u8>)], targeted: &[String]) -> (Directives, bool) {
        for name in targeted {
            let values: Vec<&[u8]> = h
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
                .collect();
            if values.is_empty() {
                continue;
            }
            // Several fields of one name are one dictionary (RFC 8941 §4.2).
            let joined = values.join(&b", "[..]);
            if let Some(d) = sf_dictionary(&joined).filter(|d| !d.is_empty()) {
                return (Directives(d), true);
            }
        }
        (Directives::of(h), false)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    fn each_seconds<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u64> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| match v {
                Arg::Value(v) => delta_seconds(v).unwrap_or(0),
                Arg::None | Arg::Invalid => 0,
            })
    }

    /// A delta-seconds argument; a missing or invalid one counts as 0 (the conservative
    /// reading, RFC 9111 §4.2.1), and of duplicates the smallest counts.
    pub fn seconds(&self, name: &str) -> Option<u64> {
        self.each_seconds(name).min()
    }

    /// A response's freshness directive (`max-age`, `s-maxage`): duplicates that disagree
    /// make the response stale (RFC 9111 §4.2.1), an invalid argument too.
    pub fn freshness(&self, name: &str) -> Option<u64> {
        let mut all = self.each_seconds(name);
        let first = all.next()?;
        Some(if all.all(|v| v == first) { first } else { 0 })
    }

    /// `min-fresh`: of duplicates, the largest (the most demanding) counts.
    pub fn min_fresh(&self) -> Option<u64> {
        self.each_seconds("min-fresh").max()
    }

    /// `max-stale` with no argument means "any staleness"; an invalid argument none; of
    /// duplicates the smallest counts.
    pub fn max_stale(&self) -> Option<u64> {
        self.0
            .iter()
            .filter(|(k, _)| k == "max-stale")
            .map(|(_, v)| match v {
                Arg::None => u64::MAX,
                Arg::Value(v) => delta_seconds(v).unwrap_or(0),
                Arg::Invalid => 0,
            })
            .min()
    }

    /// The reach of `no-cache` or `private`: a qualified form lists field names; any
    /// unqualified or malformed occurrence covers the whole response.
    pub fn scope(&self, name: &str) -> Scope {
        let mut fields = Vec::new();
        let mut any = false;
        for (_, arg) in self.0.iter().filter(|(k, _)| k == name) {
            any = true;
            let Arg::Value(list) = arg else {
                return Scope::Whole;
            };
            let names = tokens(list.as_bytes());
            if names.is_empty() || !names.iter().all(|n| n.bytes().all(is_tchar)) {
                return Scope::Whole;
            }
            fields.extend(names);
        }
        if any {
            Scope::Fields(fields)
        } else {
            Scope::Absent
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A Structured Field Dictionary (RFC 8941 §3.2, the syntax of RFC 9213's targeted
/// fields) as directives: a boolean true or a parameterless key is a bare directive, an
/// integer, string or token its argument, `?0` drops the key, anything else (negative,
/// decimal, byte sequence, inner list) is an invalid argument. A later duplicate key
/// replaces an earlier one. `None`: not a valid dictionary.
fn sf_dictionary(v: &[u8]) -> Option<Vec<(String, Arg)>> {
    let is_key_start = |b: u8| b.is_ascii_lowercase() || b == b'*';
    let is_key = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b);
    let key = |s: &mut &[u8]| -> Option<String> {
        if !s.first().is_some_and(|&b| is_key_start(b)) {
            return None;
        }
        let n = s.iter().position(|&b| !is_key(b)).unwrap_or(s.len());
        let k = String::from_utf8_lossy(&s[..n]).into_owned();
        *s = &s[n..];
        Some(k)
    };
    // A bare item: `Some(Some(arg))`, or `Some(None)` for `?0`.
    let bare_item = |s: &mut &[u8]| -> Option<Option<Arg>> {
        match s.first()? {
            b'"' => {
                let (text, rest) = quoted_string(s)?;
                if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return None;
                }
                *s = rest;
                Some(Some(Arg::Value(text)))
            }
            b'?' => {
                let r = match s.get(1)? {
                    b'1' => Some(Arg::None),
                    b'0' => None,
                    _ => return None,
                };
                *s = &s[2..];
                Some(r)
            }
            b'-' | b'0'..=b'9' => {
                let n = s
                    .iter()
                    .skip(1)
                    .position(|&b| !(b.is_ascii_digit() || b == b'.'))
                    .map_or(s.len(), |p| p + 1);
                let num = std::str::from_utf8(&s[..n]).ok()?.to_string();
                *s = &s[n..];
                let digits = num.trim_start_matches('-');
                if digits.is_empty() || digits.len() > 16 || digits.matches('.').count() > 1 {
                    return None;
                }
                Some(Some(if num.starts_with('-') || num.contains('.') {
                    Arg::Invalid
                } else {
                    Arg::Value(num)
                }))
            }
            b':' => {
                let end = s[1..].iter().position(|&b| b == b':')? + 2;
                *s = &s[end..];
                Some(Some(Arg::Invalid))
            }
            &b if b.is_ascii_alphabetic() || b == b'*' => {
                let n = s
                    .iter()
                    .position(|&b| !(is_tchar(b) || b == b':' || b == b'/'))
                    .unwrap_or(s.len());
                let t = String::from_utf8_lossy(&s[..n]).into_owned();
                *s = &s[n..];
                Some(Some(Arg::Value(t)))
            }
            _ => None,
        }
    };
    let params = |s: &mut &[u8]| -> Option<()> {
        while let [b';', rest @ ..] = *s {
            *s = rest;
            while let [b' ', rest @ ..] = *s {
                *s = rest;
            }
            key(s)?;
            if let [b'=', rest @ ..] = *s {
                *s = rest;
                bare_item(s)?;
            }
        }
        Some(())
    };
    let mut s = trim_ows(v);
    let mut out: Vec<(String, Arg)> = Vec::new();
    while !s.is_empty() {
        let k = key(&mut s)?;
        let arg = if let [b'=', rest @ ..] = s {
            s = rest;
            if let [b'(', rest @ ..] = s {
                // An inner list: skipped whole, an invalid argument here.
                let end = rest.iter().position(|&b| b == b')')?;
                s = &rest[end + 1..];
                Some(Arg::Invalid)
            } else {
                bare_item(&mut s)?
            }
        } else {
            Some(Arg::None)
        };
        params(&mut s)?;
        out.retain(|(name, _)| *name != k);
        if let Some(arg) = arg {
            out.push((k, arg));
        }
        s = trim_ows(s);
        match s {
            [] => break,
            [b',', rest @ ..] => {
                s = trim_ows(rest);
                if s.is_empty() {
                    return None; // a trailing comma
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Statuses that are heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses whose caching requirements we implement (RFC 9111 §3, §5.2.2.3): a `206` or
/// `304`, or a response with `must-understand`, is stored only with one of these.
pub fn understood(status: u16) -> bool {
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
    /// Fields (lower-case) the stored and shared copy must not carry: those a qualified
    /// `private="…"` or `no-cache="…"` names (RFC 9111 §5.2.2.7, §5.2.2.4). The first
    /// client still gets them.
    pub strip: Vec<String>,
}

/// May a shared cache store this response to this request (RFC 9111 §3), and how fresh is
/// it (§4.2.1, heuristics per §4.2.2)? `None` means: do not store. `heuristic_floor` is the
/// operator's least heuristic lifetime (0: only 10 % of the time since `Last-Modified`); it
/// applies only where a heuristic is allowed, never to answers without freshness or validator.
/// `targeted`: the field names that target this cache (RFC 9213), in priority order.
///
/// Any final status may be stored with explicit freshness (or `public`), or when it is
/// heuristically cacheable; a `206`, a `304` and a response with `must-understand` only
/// with a status we [`understood`] — and then `must-understand` overrides `no-store`.
pub fn storable(
    method: &str,
    req: &[(String, Vec<u8>)],
    status: u16,
    resp: &[(String, Vec<u8>)],
    now: SystemTime,
    heuristic_floor: Duration,
    targeted: &[String],
) -> Option<Storable> {
    if method != "GET" || status < 200 {
        return None;
    }
    let rq = Directives::of(req);
    let (cc, from_target) = Directives::of_response(resp, targeted);
    let must_understand = cc.has("must-understand");
    // A 206 we can combine with other pieces (RFC 9111 §3.4) is one we understand.
    let understood = understood(status) || (status == 206 && combinable(resp));
    if (status == 206 || status == 304 || must_understand) && !understood {
        return None;
    }
    if rq.has("no-store") || (cc.has("no-store") && !must_understand) {
        return None;
    }
    let mut strip = Vec::new();
    match cc.scope("private") {
        Scope::Absent => {}
        Scope::Whole => return None,
        Scope::Fields(f) => strip.extend(f),
    }
    let no_cache = match cc.scope("no-cache") {
        Scope::Absent => false,
        Scope::Whole => true,
        Scope::Fields(f) => {
            strip.extend(f);
            false
        }
    };
    if all_tokens(resp, "vary").iter().any(|t| t == "*") {
        return None;
    }
    let explicit = cc
        .freshness("s-maxage")
        .or_else(|| cc.freshness("max-age"))
        .map(Duration::from_secs)
        .or_else(|| {
            if from_target {
                return None;
            }
            let mut all = resp
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("expires"));
            let (_, first) = all.next()?;
            // Two Expires that disagree: stale (RFC 9111 §4.2.1). An invalid one (e.g.
            // "0") means "already expired" (§5.3).
            if all.any(|(_, v)| v != first) {
                return Some(Duration::ZERO);
            }
            let Some(expires) = parse_http_date(&String::from_utf8_lossy(first)) else {
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
        no_cache,
        strip,
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

/// Removes the fields named in `names` (lower-case) from `h`.
pub fn strip_fields(h: &mut Headers, names: &[String]) {
    if !names.is_empty() {
        h.retain(|(k, _)| !names.iter().any(|n| k.eq_ignore_ascii_case(n)));
    }
}

/// The `Age` a response carries (RFC 9111 §5.1): the first member of a list, and of the
/// first field; an invalid value (`7200;foo`, `-1`, `+5`) is ignored; a huge one saturates.
pub fn age_value(resp: &[(String, Vec<u8>)]) -> Option<Duration> {
    let v = header(resp, "age")?;
    let first = v.split(|&b| b == b',').next().unwrap_or_default();
    let first = std::str::from_utf8(trim_ows(first)).ok()?;
    delta_seconds(first).map(Duration::from_secs)
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
    let age_value = age_value(resp).unwrap_or(Duration::ZERO);
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
            min_fresh: cc.min_fresh(),
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
    if header(req, "if-none-match").is_some() {
        let etag = header_str(resp, "etag");
        let list = etag_list(req, "if-none-match");
        return list
            .iter()
            .any(|t| t == "*" || etag.as_deref().is_some_and(|e| weak_eq(t, e)));
    }
    // The stored dates are parsed only for a request that has a date to compare them with
    // (every hit passes here, and most carry no conditional).
    let Some(ims) = header_str(req, "if-modified-since").and_then(|d| parse_http_date(&d)) else {
        return false;
    };
    // Without Last-Modified, the stored answer's Date is its modification time at the
    // latest (RFC 9110 §13.1.3, RFC 9111 §4.3.2).
    header_str(resp, "last-modified")
        .or_else(|| header_str(resp, "date"))
        .and_then(|d| parse_http_date(&d))
        .is_some_and(|lm| lm <= ims)
}

/// `If-Match`/`If-Unmodified-Since` failing on a stored response: `true` means 412.
pub fn precondition_failed(req: &[(String, Vec<u8>)], resp: &[(String, Vec<u8>)]) -> bool {
    if header(req, "if-match").is_some() {
        let etag = header_str(resp, "etag");
        let list = etag_list(req, "if-match");
        return !list
            .iter()
            .any(|t| t == "*" || etag.as_deref().is_some_and(|e| strong_eq(t, e)));
    }
    let Some(ius) = header_str(req, "if-unmodified-since").and_then(|d| parse_http_date(&d)) else {
        return false;
    };
    header_str(resp, "last-modified")
        .and_then(|d| parse_http_date(&d))
        .is_some_and(|lm| lm > ius)
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
        ) || crate::http::HOP_BY_HOP.contains(&n.as_str())
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
        ) || crate::http::HOP_BY_HOP.contains(&n.as_str())
        {
            continue;
        }
        stored.push((name.clone(), value.clone()));
    }
}

/// The `Content-Range` of a `206` with one range and a known complete length:
/// `bytes first-last/len` → `(first, last, len)`, `first <= last < len`.
pub fn content_range(h: &[(String, Vec<u8>)]) -> Option<(u64, u64, u64)> {
    let v = header_str(h, "content-range")?;
    let (unit, rest) = v.split_once(' ')?;
    let (range, len) = rest.trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, len) = (
        delta_seconds(first)?,
        delta_seconds(last)?,
        delta_seconds(len)?,
    );
    (unit.eq_ignore_ascii_case("bytes") && first <= last && last < len && len < u64::MAX)
        .then_some((first, last, len))
}

/// A `206` may be stored to be combined later (RFC 9111 §3.4): one byte range of a known
/// length, and a strong `ETag` to prove later pieces belong to the same representation.
fn combinable(resp: &[(String, Vec<u8>)]) -> bool {
    content_range(resp).is_some() && header_str(resp, "etag").is_some_and(|e| e.starts_with('"'))
}

/// Are two `206` pieces of one representation (RFC 9111 §3.4): the same complete length and
/// equal strong `ETag`s? Pieces of another one are obsolete once a new piece arrives.
pub fn same_representation(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) -> bool {
    let lens = content_range(a).zip(content_range(b));
    let tags = header_str(a, "etag").zip(header_str(b, "etag"));
    matches!((lens, tags), (Some((x, y)), Some((e1, e2))) if x.2 == y.2 && strong_eq(&e1, &e2))
}

/// Combines two stored pieces of one representation (RFC 9111 §3.4): both `206` with a
/// complete length, equal strong `ETag`s, and ranges that overlap or touch. The result is
/// `(first, bytes)` of the union, the newer piece winning where they overlap; `None` when
/// they cannot be combined (the newer piece then stands alone).
pub fn combine(
    old: (&[(String, Vec<u8>)], &[u8]),
    new: (&[(String, Vec<u8>)], &[u8]),
) -> Option<(u64, Vec<u8>)> {
    let (a, b, _) = content_range(old.0)?;
    let (c, d, _) = content_range(new.0)?;
    let lengths_fit = old.1.len() as u64 == b - a + 1 && new.1.len() as u64 == d - c + 1;
    if !same_representation(old.0, new.0) || !lengths_fit {
        return None;
    }
    if c > b.saturating_add(1) || a > d.saturating_add(1) {
        return None;
    }
    let first = a.min(c);
    let last = b.max(d);
    let mut out = vec![0u8; usize::try_from(last - first + 1).ok()?];
    let at = |x: u64| (x - first) as usize;
    out[at(a)..=at(b)].copy_from_slice(old.1);
    out[at(c)..=at(d)].copy_from_slice(new.1);
    Some((first, out))
}

/// RFC 9111 §4.3.5: may a `200` to a `HEAD` update a stored `GET` answer (`true`), or must
/// the stored answer be considered stale? It may when the HEAD answer carries at least one
/// validator (`ETag`, `Last-Modified`), each equal to the stored one, and any
/// `Content-Length` it has equals the stored body's length.
pub fn head_matches(
    stored: &[(String, Vec<u8>)],
    stored_len: u64,
    head: &[(String, Vec<u8>)],
) -> bool {
    let mut any = false;
    for name in ["etag", "last-modified"] {
        if let Some(v) = header(head, name) {
            any = true;
            if header(stored, name).map(trim_ows) != Some(trim_ows(v)) {
                return false;
            }
        }
    }
    let length_ok = header_str(head, "content-length")
        .is_none_or(|n| n.parse::<u64>().ok() == Some(stored_len));
    any && length_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::http_date;

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
        storable(method, req, status, resp, t, Duration::ZERO, &cdn())
    }

    /// The default targeted fields.
    fn cdn() -> Vec<String> {
        vec!["CDN-Cache-Control".to_string()]
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
        // A 206 without a Content-Range and a strong ETag is not stored.
        assert!(st("GET", &[], 206, &h(&[("cache-control", "max-age=60")]), t).is_none());
        assert!(st(
            "GET",
            &h(&[("cache-control", "no-store")]),
            200,
            &h(&[("cache-control", "max-age=60")]),
            t
        )
        .is_none());
    }

    /// RFC 9111 §3: any final status with explicit freshness may be stored, a bodyless 204
    /// too; without it only heuristically cacheable ones; never a 1xx, nor a 206/304.
    #[test]
    fn any_final_status_with_explicit_freshness_is_stored() {
        let t = now();
        let fresh = h(&[("cache-control", "max-age=60")]);
        for status in [204, 299, 500, 503, 418, 302] {
            assert_eq!(
                st("GET", &[], status, &fresh, t).map(|s| s.lifetime.as_secs()),
                Some(60),
                "{status}"
            );
        }
        let exp = h(&[
            ("expires", &http_date(t + Duration::from_secs(30))),
            ("date", &http_date(t)),
        ]);
        assert!(st("GET", &[], 299, &exp, t).is_some());
        for status in [100, 103, 199, 206, 304] {
            assert!(st("GET", &[], status, &fresh, t).is_none(), "{status}");
        }
        // No explicit freshness: only heuristically cacheable statuses (with a validator).
        let lm = h(&[("etag", "\"e\"")]);
        assert!(st("GET", &[], 204, &lm, t).is_some());
        assert!(st("GET", &[], 500, &lm, t).is_none());
    }

    /// RFC 9111 §5.2.2.3: with must-understand, only understood statuses, and no-store
    /// is ignored for those.
    #[test]
    fn must_understand_stores_understood_statuses_despite_no_store() {
        let t = now();
        let mu = h(&[("cache-control", "max-age=60, must-understand, no-store")]);
        assert_eq!(
            st("GET", &[], 200, &mu, t).map(|s| s.lifetime.as_secs()),
            Some(60)
        );
        assert!(st("GET", &[], 299, &mu, t).is_none());
        let mu_only = h(&[("cache-control", "max-age=60, must-understand")]);
        assert!(st("GET", &[], 299, &mu_only, t).is_none());
        assert!(st("GET", &[], 404, &mu_only, t).is_some());
        // Without must-understand, no-store wins.
        let ns = h(&[("cache-control", "max-age=60, no-store")]);
        assert!(st("GET", &[], 200, &ns, t).is_none());
        // A request's no-store still forbids it.
        let rq = h(&[("cache-control", "no-store")]);
        assert!(st("GET", &rq, 200, &mu, t).is_none());
    }

    /// RFC 9111 §5.3: an invalid Expires, whatever form, means already expired.
    #[test]
    fn expires_in_any_date_form_and_invalid_means_expired() {
        let t = now();
        let life = |exp: &str| {
            st(
                "GET",
                &[],
                200,
                &h(&[("expires", exp), ("date", &http_date(t)), ("etag", "\"e\"")]),
                t,
            )
            .map(|s| s.lifetime.as_secs())
        };
        // 2023-11-14 22:13:20 is `t`; an hour later in the obsolete forms.
        assert_eq!(life("Tuesday, 14-Nov-23 23:13:20 GMT"), Some(3600));
        assert_eq!(life("Tue Nov 14 23:13:20 2023"), Some(3600));
        assert_eq!(life("tue, 14 NOV 2023 23:13:20 gmt"), Some(3600));
        // No comma after the day name: invalid, so expired (it was a valid date before).
        assert_eq!(life("Tue 14 Nov 2023 23:13:20 GMT"), Some(0));
        assert_eq!(life("Mon, 14 Nov 2023 23:13:20 GMT"), Some(0), "wrong day");
        assert_eq!(life("0"), Some(0));
        assert_eq!(life("-1"), Some(0));
    }

    /// RFC 9111 §5.1: the first member of an Age list; an invalid value ignored; a huge
    /// one saturates.
    #[test]
    fn age_takes_the_first_member_and_ignores_invalid_values() {
        let t = now();
        let age = |v: &str| {
            let resp = h(&[("date", &http_date(t)), ("age", v)]);
            initial_age(&resp, t, t).as_secs()
        };
        assert_eq!(age("7200, 0"), 7200);
        assert_eq!(age("7200,0"), 7200);
        assert_eq!(age(" 7200 "), 7200);
        assert_eq!(age("7200;foo"), 0);
        assert_eq!(age("+5"), 0);
        assert_eq!(age("-5"), 0);
        assert_eq!(age("99999999999999999999999"), u64::MAX);
        // Two Age fields: the first.
        let resp = h(&[("date", &http_date(t)), ("age", "60"), ("age", "0")]);
        assert_eq!(initial_age(&resp, t, t).as_secs(), 60);
    }

    /// RFC 9111 §5.2 grammar: no spaces around `=`; quoted arguments with commas inside;
    /// duplicates read conservatively (§4.2.1).
    #[test]
    fn cache_control_parsing_is_strict_and_conservative() {
        let t = now();
        let life = |cc: &str| {
            st(
                "GET",
                &[],
                200,
                &h(&[("cache-control", cc), ("etag", "\"e\"")]),
                t,
            )
            .map(|s| s.lifetime.as_secs())
        };
        assert_eq!(life("max-age=3600"), Some(3600));
        assert_eq!(life("MAX-AGE=3600"), Some(3600));
        assert_eq!(life("max-age=\"3600\""), Some(3600));
        for bad in [
            "max-age = 3600",
            "max-age =3600",
            "max-age= 3600",
            "max-age=36 00",
            "max-age=+3600",
            "max-age=3600x",
            "max-age",
            "max-age=\"3600",
        ] {
            assert_eq!(life(bad), Some(0), "{bad:?}");
        }
        // Duplicates that disagree: stale; that agree: the value.
        assert_eq!(life("max-age=60, max-age=3600"), Some(0));
        assert_eq!(life("max-age=3600, max-age=60"), Some(0));
        assert_eq!(life("max-age=60, max-age=60"), Some(60));
        let two = h(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "max-age=600"),
            ("etag", "\"e\""),
        ]);
        assert_eq!(st("GET", &[], 200, &two, t).unwrap().lifetime.as_secs(), 0);
        // A comma inside a quoted argument does not start a directive.
        let d = Directives::of(&h(&[(
            "cache-control",
            "ext=\"a, max-age=5\", max-age=60, no-cache=\"X-A, X-B\"",
        )]));
        assert_eq!(d.freshness("max-age"), Some(60));
        assert_eq!(
            d.scope("no-cache"),
            Scope::Fields(vec!["x-a".into(), "x-b".into()])
        );
        let d = Directives::of(&h(&[("cache-control", "ext=\"a\\\"b, max-age=5\"")]));
        assert_eq!(
            d.freshness("max-age"),
            None,
            "an escaped quote stays inside"
        );
        // Two Expires that disagree: stale.
        let exp = h(&[
            ("expires", &http_date(t + Duration::from_secs(30))),
            ("expires", &http_date(t + Duration::from_secs(90))),
            ("date", &http_date(t)),
            ("etag", "\"e\""),
        ]);
        assert_eq!(st("GET", &[], 200, &exp, t).unwrap().lifetime.as_secs(), 0);
        // Request directives: smallest max-age and max-stale, largest min-fresh.
        let r = RequestRules::of(&h(&[(
            "cache-control",
            "max-age=100, max-age=5, min-fresh=1, min-fresh=50, max-stale=9, max-stale",
        )]));
        assert_eq!(
            (r.max_age, r.min_fresh, r.max_stale),
            (Some(5), Some(50), Some(9))
        );
        let r = RequestRules::of(&h(&[("cache-control", "max-stale = 100")]));
        assert_eq!(
            r.max_stale,
            Some(0),
            "an invalid max-stale allows no staleness"
        );
    }

    /// RFC 9111 §5.2.2.4, §5.2.2.7: qualified no-cache/private strip the named fields
    /// from the stored copy; unqualified ones keep their whole meaning.
    #[test]
    fn qualified_no_cache_and_private_strip_the_named_fields() {
        let t = now();
        let s = st(
            "GET",
            &[],
            200,
            &h(&[(
                "cache-control",
                "max-age=60, no-cache=\"Set-Cookie\", private=\"X-Foo, X-Bar\"",
            )]),
            t,
        )
        .expect("qualified: stored");
        assert!(!s.no_cache, "qualified no-cache is not no-cache");
        assert_eq!(s.lifetime.as_secs(), 60);
        assert_eq!(s.strip, ["x-foo", "x-bar", "set-cookie"]);
        let mut stored = h(&[("Set-Cookie", "a=1"), ("X-Foo", "f"), ("X-Keep", "k")]);
        strip_fields(&mut stored, &s.strip);
        assert_eq!(stored, h(&[("X-Keep", "k")]));
        // Unqualified forms, and a malformed list, are the whole response.
        assert!(st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "max-age=60, private")]),
            t
        )
        .is_none());
        assert!(st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "max-age=60, private=\"\"")]),
            t
        )
        .is_none());
        let nc = st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "max-age=60, no-cache")]),
            t,
        )
        .unwrap();
        assert!(nc.no_cache && nc.strip.is_empty());
        let both = st(
            "GET",
            &[],
            200,
            &h(&[("cache-control", "max-age=60, no-cache=\"X-A\", no-cache")]),
            t,
        )
        .unwrap();
        assert!(both.no_cache, "any unqualified occurrence wins");
    }

    /// RFC 9213: the first valid targeted field replaces Cache-Control and Expires.
    #[test]
    fn cdn_cache_control_replaces_cache_control_for_this_cache() {
        let t = now();
        let life = |r: &[(&str, &str)], targeted: &[String]| {
            storable("GET", &[], 200, &h(r), t, Duration::ZERO, targeted)
                .map(|s| s.lifetime.as_secs())
        };
        let cdn = cdn();
        let both = [
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=600"),
        ];
        assert_eq!(life(&both, &cdn), Some(600));
        assert_eq!(life(&both, &[]), Some(60), "not targeted: ignored");
        // It may allow what Cache-Control forbids, and forbid what it allows.
        assert_eq!(
            life(
                &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=30")
                ],
                &cdn
            ),
            Some(30)
        );
        assert_eq!(
            life(
                &[
                    ("cache-control", "max-age=60"),
                    ("cdn-cache-control", "no-store")
                ],
                &cdn
            ),
            None
        );
        // Expires is ignored with a targeted field.
        let exp = http_date(t + Duration::from_secs(99));
        assert_eq!(
            life(
                &[
                    ("expires", &exp),
                    ("cdn-cache-control", "public"),
                    ("date", &http_date(t)),
                    ("etag", "\"e\"")
                ],
                &cdn
            ),
            Some(0)
        );
        // Invalid (not a structured dictionary) or empty: Cache-Control rules.
        for bad in [
            "max-age = 600",
            "Max-Age=600",
            "max-age=600,",
            "max-age=\"6",
            "",
        ] {
            assert_eq!(
                life(
                    &[("cache-control", "max-age=60"), ("cdn-cache-control", bad)],
                    &cdn
                ),
                Some(60),
                "{bad:?}"
            );
        }
        // Priority order, case-insensitive names; a later invalid one is not consulted.
        let order = vec![
            "Surrogate-Control".to_string(),
            "CDN-Cache-Control".to_string(),
        ];
        assert_eq!(
            life(
                &[
                    ("cdn-cache-control", "max-age=600"),
                    ("surrogate-control", "max-age=900")
                ],
                &order
            ),
            Some(900)
        );
        assert_eq!(
            life(
                &[
                    ("cdn-cache-control", "max-age=600"),
                    ("surrogate-control", "x=(")
                ],
                &order
            ),
            Some(600)
        );
        // Structured syntax: booleans, parameters, a false boolean drops the key.
        assert_eq!(
            life(&[("cdn-cache-control", "max-age=5;a=1, no-store=?0")], &cdn),
            Some(5)
        );
        assert_eq!(
            life(&[("cdn-cache-control", "max-age=5, no-store=?1")], &cdn),
            None
        );
        let neg = [
            ("cdn-cache-control", "max-age=-5"),
            ("cache-control", "max-age=60"),
            ("etag", "\"e\""),
        ];
        assert_eq!(
            life(&neg, &cdn),
            Some(0),
            "valid dictionary, invalid max-age: stale"
        );
    }

    /// RFC 9111 §4.3.2: without Last-Modified, If-Modified-Since compares with Date.
    #[test]
    fn if_modified_since_falls_back_to_the_stored_date() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let resp = h(&[("date", date)]);
        assert!(not_modified(&h(&[("if-modified-since", date)]), &resp));
        assert!(not_modified(
            &h(&[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]),
            &resp
        ));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &resp
        ));
        // Last-Modified, when there, wins over Date.
        let resp = h(&[
            ("date", date),
            ("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&h(&[("if-modified-since", date)]), &resp));
    }

    /// RFC 9111 §4.3.5: a HEAD 200 updates a stored GET only if its validators (and any
    /// Content-Length) match.
    #[test]
    fn a_head_answer_matches_only_with_equal_validators_and_length() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(head_matches(&stored, 5, &h(&[("etag", "\"v1\"")])));
        assert!(head_matches(
            &stored,
            5,
            &h(&[("etag", "\"v1\""), ("content-length", "5")])
        ));
        assert!(!head_matches(
            &stored,
            5,
            &h(&[("etag", "\"v1\""), ("content-length", "6")])
        ));
        assert!(!head_matches(&stored, 5, &h(&[("etag", "\"v2\"")])));
        assert!(!head_matches(
            &stored,
            5,
            &h(&[
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")
            ])
        ));
        assert!(
            !head_matches(&stored, 5, &h(&[("content-length", "5")])),
            "no validator"
        );
        assert!(!head_matches(&h(&[]), 5, &h(&[("etag", "\"v1\"")])));
    }

    /// RFC 9111 §3.3-3.4: a 206 with one range, a complete length and a strong ETag is
    /// stored; pieces of one representation combine when they touch or overlap.
    #[test]
    fn partial_answers_are_stored_and_combined() {
        let t = now();
        let piece = |range: &str, etag: &str| {
            h(&[
                ("content-range", range),
                ("etag", etag),
                ("cache-control", "max-age=60"),
            ])
        };
        assert!(st("GET", &[], 206, &piece("bytes 0-4/10", "\"p\""), t).is_some());
        for (range, etag) in [
            ("bytes 0-4/*", "\"p\""),
            ("bytes 5-4/10", "\"p\""),
            ("bytes 0-10/10", "\"p\""),
            ("items 0-4/10", "\"p\""),
            ("bytes 0-4/10", "W/\"p\""),
        ] {
            assert!(
                st("GET", &[], 206, &piece(range, etag), t).is_none(),
                "{range} {etag}"
            );
        }
        let a = piece("bytes 0-4/10", "\"p\"");
        let b = piece("bytes 5-9/10", "\"p\"");
        assert_eq!(
            combine((&a, b"01234"), (&b, b"56789")),
            Some((0, b"0123456789".to_vec()))
        );
        let c = piece("bytes 3-6/10", "\"p\"");
        assert_eq!(
            combine((&b, b"56789"), (&c, b"3456")),
            Some((3, b"3456789".to_vec()))
        );
        assert!(same_representation(&a, &c));
        assert!(
            !same_representation(&a, &piece("bytes 0-4/11", "\"p\"")),
            "length"
        );
        assert!(
            !same_representation(&a, &piece("bytes 0-4/10", "\"q\"")),
            "tag"
        );
        assert!(
            !same_representation(&a, &piece("bytes 0-4/10", "W/\"p\"")),
            "weak"
        );
        let gap = piece("bytes 7-9/10", "\"p\"");
        assert_eq!(combine((&a, b"01234"), (&gap, b"789")), None, "a gap");
        let other = piece("bytes 5-9/10", "\"q\"");
        assert_eq!(
            combine((&a, b"01234"), (&other, b"56789")),
            None,
            "another tag"
        );
        let longer = piece("bytes 5-9/11", "\"p\"");
        assert_eq!(combine((&a, b"01234"), (&longer, b"56789")), None);
        assert_eq!(combine((&a, b"0123"), (&b, b"56789")), None, "short body");
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
            storable("GET", &[], status, &h(r), t, floor, &[]).map(|s| s.lifetime.as_secs())
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

//! HTTP helpers both daemons need: the one header lookup, hop-by-hop headers, reason phrases
//! (`http` crate), dates (all three HTTP-date forms parsed and IMF-fixdate written, through
//! `httpdate`), content types (`mime_guess`), the cache outcome shown in `X-Cache`, and safe
//! path decoding (`percent-encoding`, with the checks that keep a path under the document root).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Headers that describe one connection, never forwarded nor stored (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request fields that make a GET conditional or partial: answers to such requests depend
/// on more than the stored object (a worker's L1 leaves them to cached, which never grants
/// them an L1 lifetime).
/// Whether an answer of `status` never has a body (RFC 9110 §6.4.1: 1xx, 204, 304), so it
/// carries no `Content-Length` either.
pub fn bodiless(status: u16) -> bool {
    status == 204 || status == 304 || (100..200).contains(&status)
}

pub const CONDITIONAL: &[&str] = &[
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
];

/// A header list as the protocol heads carry it: names as received, raw values, in order.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The first value of field `name` in a header list (names compare ASCII
/// case-insensitively, RFC 9110 §5.1).
pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// True if `name` is hop-by-hop, or listed in the message's `Connection` header values.
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
}

/// Comma-separated tokens of a header value, trimmed of OWS (SP and HTAB only, RFC 9110
/// §5.6.3: never Unicode whitespace, or `chunked\u{a0}` would read as `chunked`) and
/// ASCII-lower-cased.
pub fn tokens(value: &[u8]) -> Vec<String> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

/// `v` without leading and trailing SP/HTAB.
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// The one list of cache outcomes, handed to the macro `$m` (with its own arguments after
/// the list): variant, value on the wire ([`crate::protocol::ResponseHead`]), name (`X-Cache`,
/// the access log, the `outcome` label of `responses_by_outcome`) and its stats counter.
/// From it come [`CacheOutcome`] itself and the `outcome_*` fields of the stats slots; the
/// order is the counters' order. A wire value is never reused for another outcome.
macro_rules! with_cache_outcomes {
    ($m:ident ! { $($args:tt)* }) => {
        $m! {
            [
                /// Answered from a stored object.
                Hit = 1, "HIT", outcome_hit;
                /// Fetched from the source, and stored if it could be.
                Miss = 2, "MISS", outcome_miss;
                /// Not cacheable by method or request: passed through.
                Pass = 3, "PASS", outcome_pass;
                /// Served stale (origin unreachable and staleness allowed).
                Stale = 4, "STALE", outcome_stale;
                /// Stored object revalidated with the origin (304).
                Revalidated = 5, "REVALIDATED", outcome_revalidated;
                /// Joined another request's fill in progress (request collapsing).
                Collapsed = 8, "COLLAPSED", outcome_collapsed;
                /// Error produced by shmproxy itself (no source answer).
                Error = 6, "ERROR", outcome_error;
                /// Internal endpoint of the proxy.
                Internal = 7, "INTERNAL", outcome_internal;
            ]
            $($args)*
        }
    };
}
pub(crate) use with_cache_outcomes;

macro_rules! cache_outcome_enum {
    ([ $( $(#[$doc:meta])* $variant:ident = $wire:literal, $name:literal, $counter:ident; )* ]) => {
        /// How a response was produced; the value of `X-Cache` and of the access log's cache
        /// field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum CacheOutcome {
            $( $(#[$doc])* $variant = $wire, )*
        }

        impl CacheOutcome {
            /// Every outcome, in the counters' order.
            pub const ALL: &[CacheOutcome] = &[ $( CacheOutcome::$variant ),* ];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $( CacheOutcome::$variant => $name, )*
                }
            }

            /// The outcome a wire value stands for (`None` for a value no outcome has).
            pub const fn from_wire(v: u8) -> Option<CacheOutcome> {
                match v {
                    $( $wire => Some(CacheOutcome::$variant), )*
                    _ => None,
                }
            }

            pub const fn wire(self) -> u8 {
                self as u8
            }
        }
    };
}

with_cache_outcomes!(cache_outcome_enum! {});

impl CacheOutcome {
    /// The `Cache-Status` value (RFC 9211) of an answer with this outcome: `method` of the
    /// request, `fwd_status` the origin's status when the origin took part (0: it did not),
    /// `ttl` the remaining freshness in seconds when known.
    pub fn cache_status(
        self,
        name: &str,
        method: &str,
        fwd_status: u16,
        ttl: Option<u64>,
    ) -> String {
        let mut v = String::from(name);
        let fwd = |v: &mut String, why: &str| {
            v.push_str("; fwd=");
            v.push_str(why);
            if fwd_status != 0 {
                v.push_str(&format!("; fwd-status={fwd_status}"));
            }
        };
        match self {
            CacheOutcome::Hit => v.push_str("; hit"),
            CacheOutcome::Miss => {
                fwd(&mut v, "uri-miss");
                v.push_str("; stored");
            }
            CacheOutcome::Pass if method == "GET" || method == "HEAD" => fwd(&mut v, "uri-miss"),
            CacheOutcome::Pass => fwd(&mut v, "method"),
            // Stale and answered without the origin (max-stale, stale-while-revalidate, an
            // unreachable origin): a hit; stale in place of the origin's error: forwarded.
            CacheOutcome::Stale if fwd_status == 0 => v.push_str("; hit; detail=stale"),
            CacheOutcome::Stale => {
                fwd(&mut v, "stale");
                v.push_str("; detail=stale-if-error");
            }
            CacheOutcome::Revalidated => fwd(&mut v, "stale"),
            CacheOutcome::Collapsed => {
                fwd(&mut v, "uri-miss");
                v.push_str("; collapsed");
            }
            CacheOutcome::Error => v.push_str("; detail=error"),
            CacheOutcome::Internal => v.push_str("; fwd=bypass"),
        }
        if let Some(ttl) = ttl {
            v.push_str(&format!("; ttl={ttl}"));
        }
        v
    }
}

/// The reason phrase of `status` (the `http` crate's table; "Unknown" for a code it lacks).
pub fn reason(status: u16) -> &'static str {
    ::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Formats a time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) with `httpdate`; a
/// time before 1970 is written as the epoch and one after [`MAX_YEAR`] as its last second
/// (both only come from odd file times, and `httpdate` takes neither).
pub fn http_date(t: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(END_OF_MAX_YEAR - 1);
    httpdate::fmt_http_date(t.clamp(UNIX_EPOCH, last))
}

/// Latest year a parsed date may name. RFC 9110 dates have four-digit years; anything
/// later is refused, so date arithmetic downstream never sees a time near the edge of what
/// `SystemTime` (or `Instant`) can hold.
pub const MAX_YEAR: i64 = 9999;

/// Parses an HTTP-date (RFC 9110 §5.6.7) in any of its three forms: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`). Names
/// (days, months, `GMT`) match case-insensitively, as RFC 9111 §4.2 asks of a cache; the
/// day name must be the right day of that date; years before 1970 or after [`MAX_YEAR`],
/// and anything else, give `None`. Never panics.
///
/// The `httpdate` crate does the parsing and the calendar checks. It is case-sensitive and
/// takes an RFC 850 year `00`-`69` as 20xx and `70`-`99` as 19xx whatever the date today,
/// so this wraps it: names are put in their canonical case first, and an RFC 850 date is
/// rewritten as an IMF-fixdate whose century follows RFC 9110's rule (a two-digit year more
/// than 50 years in the future is the most recent past year with those digits).
pub fn parse_http_date(v: &str) -> Option<SystemTime> {
    parse_http_date_at(v, SystemTime::now())
}

/// [`parse_http_date`] with the current time given (it only settles RFC 850 centuries).
pub fn parse_http_date_at(v: &str, now: SystemTime) -> Option<SystemTime> {
    let v = std::str::from_utf8(trim_ows(v.as_bytes())).ok()?;
    // Only printable ASCII and single spaces belong in a date; httpdate trims more than
    // OWS (CR, LF, form feed) and each form has a fixed length, so refuse early.
    if v.len() > 40 || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return None;
    }
    let canonical = canonical_case(v);
    let imf = match rfc850_as_imf(&canonical, now) {
        Some(imf) => imf,
        None => canonical,
    };
    let t: SystemTime = httpdate::parse_http_date(&imf).ok()?;
    // httpdate keeps to 1970..=9999 and seconds below 60 itself; this is belt and braces
    // for what later arithmetic relies on.
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < END_OF_MAX_YEAR).then_some(t)
}

/// 10000-01-01T00:00:00Z in seconds since the epoch: every accepted date is before it.
const END_OF_MAX_YEAR: u64 = 253_402_300_800;

const DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Each run of letters as the grammar spells it: `GMT` upper case, names capitalised.
fn canonical_case(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for word in v.split_inclusive(|c: char| !c.is_ascii_alphabetic()) {
        let letters = word.trim_end_matches(|c: char| !c.is_ascii_alphabetic());
        let rest = &word[letters.len()..];
        if letters.eq_ignore_ascii_case("gmt") {
            out.push_str("GMT");
        } else {
            for (j, c) in letters.chars().enumerate() {
                out.push(if j == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                });
            }
        }
        out.push_str(rest);
    }
    out
}

/// `Sunday, 06-Nov-94 08:49:37 GMT` (canonical case) as `Sun, 06 Nov 1994 08:49:37 GMT`,
/// the century chosen by RFC 9110 §5.6.7; `None` if `v` is not of that form.
fn rfc850_as_imf(v: &str, now: SystemTime) -> Option<String> {
    let (day, rest) = v.split_once(", ")?;
    if !DAY_NAMES.contains(&day) {
        return None;
    }
    let b = rest.as_bytes();
    // "06-Nov-94 08:49:37 GMT"
    if b.len() != 22 || b[2] != b'-' || b[6] != b'-' || b[9] != b' ' {
        return None;
    }
    let yy = &rest[7..9];
    if !yy.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let yy: i64 = yy.parse().ok()?;
    let this_year = civil_from_days(
        (now.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
            / 86_400) as i64,
    )
    .0;
    let mut year = this_year - this_year.rem_euclid(100) + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    Some(format!(
        "{}, {} {} {year:04} {}",
        &day[..3],
        &rest[..2],
        &rest[3..6],
        &rest[10..]
    ))
}

/// Month abbreviations of HTTP and log dates.
pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// (year, month 1..=12, day 1..=31) of the day `z` days after 1970-01-01
/// (Howard Hinnant's civil-date algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Content type by file extension (`mime_guess`'s table), `application/octet-stream` when
/// it has none. Text types, and JavaScript, say `charset=utf-8`: files are served as they
/// are, and UTF-8 is what a document root is expected to hold.
pub fn content_type(path: &str) -> String {
    let media = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    if media.starts_with("text/") || media == "application/javascript" {
        format!("{media}; charset=utf-8")
    } else {
        media.to_string()
    }
}

/// Why a request path cannot name a file under the document root.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    BadEncoding,
    /// `..`, an encoded slash or NUL, or a backslash.
    Forbidden,
}

/// Decodes the path part of an origin-form target into relative path segments, refusing
/// anything that could leave the root: `..` (also encoded), encoded `/` (`%2f`), NUL and `\`.
pub fn safe_path_segments(target: &str) -> Result<Vec<String>, PathError> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(PathError::Forbidden);
    }
    let mut out = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode(raw)?;
        if seg.contains(['/', '\\', '\0']) {
            return Err(PathError::Forbidden);
        }
        match seg.as_str() {
            "" | "." => continue,
            ".." => return Err(PathError::Forbidden),
            _ => out.push(seg),
        }
    }
    Ok(out)
}

/// Percent-decodes one segment (`percent-encoding`), refusing what that crate lets through:
/// a `%` not followed by two hex digits, and bytes that are not UTF-8.
fn percent_decode(s: &str) -> Result<String, PathError> {
    let b = s.as_bytes();
    let well_formed = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(PathError::BadEncoding);
    }
    percent_encoding::percent_decode(b)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| PathError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_finds_the_first_value_whatever_the_case() {
        let h: Headers = vec![
            ("Vary".into(), b"a".to_vec()),
            ("vary".into(), b"b".to_vec()),
        ];
        assert_eq!(header(&h, "VARY"), Some(&b"a"[..]));
        assert_eq!(header(&h, "etag"), None);
    }

    #[test]
    fn cache_status_names_the_outcome_as_rfc_9211_does() {
        let cs =
            |o: CacheOutcome, m: &str, s: u16, t: Option<u64>| o.cache_status("shmproxy", m, s, t);
        assert_eq!(
            cs(CacheOutcome::Hit, "GET", 0, Some(42)),
            "shmproxy; hit; ttl=42"
        );
        assert_eq!(
            cs(CacheOutcome::Miss, "GET", 200, None),
            "shmproxy; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            cs(CacheOutcome::Pass, "POST", 201, None),
            "shmproxy; fwd=method; fwd-status=201"
        );
        assert_eq!(
            cs(CacheOutcome::Revalidated, "GET", 304, None),
            "shmproxy; fwd=stale; fwd-status=304"
        );
        assert_eq!(
            cs(CacheOutcome::Stale, "GET", 503, None),
            "shmproxy; fwd=stale; fwd-status=503; detail=stale-if-error"
        );
        assert_eq!(
            cs(CacheOutcome::Stale, "GET", 0, None),
            "shmproxy; hit; detail=stale"
        );
        assert_eq!(
            cs(CacheOutcome::Collapsed, "GET", 200, None),
            "shmproxy; fwd=uri-miss; fwd-status=200; collapsed"
        );
    }

    #[test]
    fn dates_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("garbage"), None);
        let now = SystemTime::now();
        let back = parse_http_date(&http_date(now)).unwrap();
        assert!(now.duration_since(back).unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn out_of_range_dates_are_refused_never_overflow() {
        for bad in [
            "Sun, 06 Nov 400000000000 08:49:37 GMT",
            "Sun, 06 Nov 10000 08:49:37 GMT",
            "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov -1994 08:49:37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 +8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, 999999999999 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        let last = parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT").unwrap();
        assert_eq!(http_date(last), "Fri, 31 Dec 9999 23:59:59 GMT");
        // Found by fuzzing: its leap second would format as the year 10000.
        assert_eq!(parse_http_date("Fri, 31 Dec 9999 23:59:60 GMT"), None);
        assert!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == Some(UNIX_EPOCH));
        // Formatting never panics: odd file times are clamped to what the format holds.
        assert_eq!(
            http_date(UNIX_EPOCH - Duration::from_secs(1)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(END_OF_MAX_YEAR + 86_400)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    /// RFC 9110 §5.6.7: all three forms, names in any case (RFC 9111 §4.2), the day name
    /// checked against the date.
    #[test]
    fn dates_in_all_three_forms_and_any_case() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "SUNDAY, 06-nOv-94 08:49:37 Gmt",
            "sun NOV  6 08:49:37 1994",
            " Sun, 06 Nov 1994 08:49:37 GMT\t",
        ] {
            assert_eq!(parse_http_date(v), Some(t), "{v:?}");
        }
        for bad in [
            // No comma: not an IMF-fixdate, and not 8 Aug 2050 either.
            "Thu 18 Aug 2050 02:01:18 GMT",
            // The wrong day name for the date.
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Monday, 06-Nov-94 08:49:37 GMT",
            "Mon Nov  6 08:49:37 1994",
            "Sundxy, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    /// RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is the latest past year
    /// with those digits; otherwise it is this century's.
    #[test]
    fn rfc850_years_follow_the_fifty_year_rule() {
        let year = |v: &str, now_secs: u64| {
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            parse_http_date_at(v, now).map(|t| http_date(t)[12..16].to_string())
        };
        // 2026-12-02: "75" is 2075 (49 years ahead), "94" is 1994, "00" is 2000.
        let now = 1_796_169_600;
        assert_eq!(
            year("Tuesday, 01-Jan-75 00:00:00 GMT", now).as_deref(),
            Some("2075")
        );
        assert_eq!(
            year("Sunday, 06-Nov-94 08:49:37 GMT", now).as_deref(),
            Some("1994")
        );
        assert_eq!(
            year("Saturday, 01-Jan-00 00:00:00 GMT", now).as_deref(),
            Some("2000")
        );
        // Read in 1994, "75" is 1975.
        assert_eq!(
            year("Wednesday, 01-Jan-75 00:00:00 GMT", 784_111_777).as_deref(),
            Some("1975")
        );
    }

    #[test]
    fn paths_never_escape() {
        assert_eq!(
            safe_path_segments("/a/b.txt?x=1").unwrap(),
            vec!["a", "b.txt"]
        );
        assert_eq!(safe_path_segments("/a%20b").unwrap(), vec!["a b"]);
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/x",
            "/a%2fb",
            "/a%00b",
            "/a/..",
            "/%2E%2E/x",
            "a/b",
            "/a\\..\\b",
        ] {
            assert!(
                safe_path_segments(bad).is_err()
                    || !safe_path_segments(bad).unwrap().iter().any(|s| s == ".."),
                "{bad}"
            );
        }
        assert_eq!(safe_path_segments("/a/%2e%2e/x"), Err(PathError::Forbidden));
        assert_eq!(safe_path_segments("/a%2fb"), Err(PathError::Forbidden));
        assert_eq!(safe_path_segments("/a%00b"), Err(PathError::Forbidden));
        assert_eq!(safe_path_segments("/a%zz"), Err(PathError::BadEncoding));
    }

    #[test]
    fn reasons_and_content_types() {
        assert_eq!(reason(200), "OK");
        assert_eq!(reason(431), "Request Header Fields Too Large");
        assert_eq!(reason(421), "Misdirected Request");
        assert_eq!(reason(508), "Loop Detected");
        assert_eq!(reason(299), "Unknown");
        assert_eq!(reason(1000), "Unknown");
        assert_eq!(content_type("/a/b.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("x.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.json"), "application/json");
        assert_eq!(content_type("x.png"), "image/png");
        assert_eq!(content_type("x.svg"), "image/svg+xml");
        assert_eq!(content_type("noext"), "application/octet-stream");
        assert_eq!(content_type("x.unknownext"), "application/octet-stream");
    }

    #[test]
    fn bad_percent_encodings_are_refused() {
        assert_eq!(safe_path_segments("/a%4"), Err(PathError::BadEncoding));
        assert_eq!(safe_path_segments("/a%"), Err(PathError::BadEncoding));
        assert_eq!(safe_path_segments("/a%+1b"), Err(PathError::BadEncoding));
        assert_eq!(safe_path_segments("/%ff"), Err(PathError::BadEncoding));
        assert_eq!(safe_path_segments("/%C3%A9").unwrap(), vec!["é"]);
        assert_eq!(safe_path_segments("/%2e").unwrap(), Vec::<String>::new());
        assert_eq!(safe_path_segments("/a%5cb"), Err(PathError::Forbidden));
    }

    #[test]
    fn hop_by_hop_includes_connection_tokens() {
        let t = tokens(b"close, X-Foo");
        assert!(is_hop_by_hop("x-foo", &t));
        assert!(is_hop_by_hop("Keep-Alive", &[]));
        assert!(!is_hop_by_hop("Accept", &t));
    }
}

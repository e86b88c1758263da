//! What a fresh hit served from the cache arena (`arena`) needs, shared by its writer
//! (`cached`) and its readers (the proxy workers), so both apply the same rules: the arena
//! keys, the versioned metadata stored beside each body ([`Meta`]: the stored answer's
//! status, fields and freshness data, or for a URL whose answers vary a stub naming the
//! request fields they vary on), which requests a worker may answer from it, and the
//! answer it gives ([`Object::answer`], as `cached` writes a hit: conditionals by [`reuse`],
//! ranges by [`ranged`], the rules `cached` applies to its own hits). A file of the document
//! root carries its identity ([`FileId`]), which the worker checks against the disk.
//!
//! Keys. An object lives under [`key`] (`http://HOST TARGET`, the normalised host the proxy
//! forwards); a URL whose answer carries `Vary` has a stub there, and each variant lives
//! under [`variant_key`], which names the stub's generation: a new stub (other `Vary`
//! fields, or a PURGE that removed the old one) makes every older variant unreachable at
//! once, without the writer having to know them.
//!
//! Decoding never trusts the bytes: a truncated, overlong or malformed record is an error
//! (the reader counts it and treats it as a miss).

use crate::cache_policy::{self as policy, RequestRules, Use};
use crate::http::Headers;
use crate::protocol::{Dec, DecodeError, Enc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First byte of every metadata record.
const MAGIC: u8 = b'H';
/// Metadata layout version; any change to [`Meta::encode`] bumps it.
pub const META_VERSION: u8 = 2;
const OBJECT: u8 = 1;
const VARY: u8 = 2;
const MUST_REVALIDATE: u8 = 1;
const NO_CACHE: u8 = 2;
const SHOW_TTL: u8 = 4;
const FILE: u8 = 8;
/// Longest remaining freshness an answer announces in its `Cache-Status` (`ttl=`).
pub const MAX_SHOWN_TTL: Duration = Duration::from_secs(3600);

/// A stored answer as a worker serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub status: u16,
    /// The fields sent downstream, without `Age` and framing.
    pub headers: Headers,
    /// When the answer was received (RFC 9111 `response_time`).
    pub response_time: SystemTime,
    /// Its corrected initial age (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    pub lifetime: Duration,
    pub must_revalidate: bool,
    pub no_cache: bool,
    /// Whether its `Cache-Status` shows the remaining freshness (`ttl=`), as `cached` says
    /// for answers that everyone may reuse as they are.
    pub show_ttl: bool,
    /// Name of the site that answered (for the access log).
    pub site: String,
    /// A file of the document root (disk mode): served only while the file on disk is still
    /// the one read ([`FileId::matches`]); its freshness is that identity, it has no `Age`,
    /// and its `Cache-Status` shows `lifetime` (`cached.revalidate_ms`) as `cached` does.
    pub file: Option<FileId>,
}

/// The identity of a file of the document root as `cached` read it: its canonical path, and
/// the size, mtime (ns) and inode `cached`'s stored copy is checked against on each hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    pub path: String,
    pub len: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl FileId {
    /// The mtime in ns of `meta`, as `cached` records it.
    pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
        use std::os::unix::fs::MetadataExt;
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
    }

    /// Whether the file at the path is still the one read: its path is still canonical (no
    /// symlink took the place of the file or of a directory above it) and a regular file of
    /// the same size, mtime and inode. Any error (gone, not ours to read): no.
    pub fn matches(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let path = std::path::Path::new(&self.path);
        let (Ok(canon), Ok(meta)) = (std::fs::canonicalize(path), std::fs::metadata(path)) else {
            return false;
        };
        canon == path
            && meta.is_file()
            && meta.len() == self.len
            && Self::mtime_ns(&meta) == self.mtime_ns
            && meta.ino() == self.ino
    }
}

/// What the arena stores beside a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meta {
    Object(Object),
    /// The answers of this URL vary on these request fields (lowercase): look up the
    /// variant's key ([`variant_key`]).
    Vary(Vec<String>),
}

/// The arena key of the answer for `target` on `host` (the normalised host).
pub fn key(host: &str, target: &str) -> String {
    let mut k = String::with_capacity(7 + host.len() + target.len());
    k.push_str("http://");
    k.push_str(host);
    k.push_str(target);
    k
}

/// The key of the variant a request with fields `req` selects, under the stub of generation
/// `stub` that names the fields `vary`.
pub fn variant_key(key: &str, stub: u64, vary: &[String], req: &[(String, Vec<u8>)]) -> String {
    format!("{key}\n{stub}\n{}", policy::vary_key(vary, req))
}

/// Whether a worker may answer this request from the arena: a GET or HEAD without
/// credentials (those go to `cached`, which has the full rules; a precondition that fails
/// does too, see [`Object::answer`]). A `Range` is answered as `cached` answers it
/// ([`ranged`]). A body does not select a stored answer: the worker reads it and throws it
/// away.
pub fn answerable(method: &str, headers: &[(String, Vec<u8>)]) -> bool {
    (method == "GET" || method == "HEAD")
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
}

/// The answer a fresh stored object gives a request, as `cached` writes it for a hit.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Its fields, `Age` included (framing and ours are the head writer's).
    pub fields: Headers,
    /// The bytes of the stored body that go with it (all of them, a range's, or none for a
    /// `416`); `None`: it has no body and announces no length (a `204`, a `304`).
    pub body: Option<std::ops::Range<u64>>,
    /// The `ttl=` its `Cache-Status` shows.
    pub ttl: Option<u64>,
}

/// What `cached` grants a reusable answer of `lifetime` at `age`: its remaining freshness,
/// at most [`MAX_SHOWN_TTL`] (shown as `ttl=` in `Cache-Status`).
pub fn remaining(lifetime: Duration, age: Duration) -> Duration {
    lifetime.saturating_sub(age).min(MAX_SHOWN_TTL)
}

/// Current age of a stored answer (RFC 9111 §4.2.3: corrected initial age plus resident
/// time since `response_time`), for cached's stored answers and the arena's alike.
pub fn current_age(initial_age: Duration, response_time: SystemTime, now: SystemTime) -> Duration {
    initial_age.saturating_add(now.duration_since(response_time).unwrap_or(Duration::ZERO))
}

/// How a stored answer meets a request, as every hit is answered (by `cached` and by a
/// worker from the arena).
#[derive(Debug, PartialEq, Eq)]
pub enum Reuse {
    /// A precondition failed: `412`.
    PreconditionFailed,
    /// The client's conditionals (RFC 9110 §13.2.2) match: `304` with these fields (no
    /// `Content-*`).
    NotModified(Headers),
    /// The whole answer with these fields (`Accept-Ranges: bytes` for a `200`: ranges of
    /// stored objects are ours to answer); `conditional` when the request carried
    /// conditionals (its answer shows no `ttl=`).
    Whole { fields: Headers, conditional: bool },
}

/// The answer a stored `status` with validators in `stored` and outgoing `fields` gives a
/// request with fields `req`; `age`, when given, replaces any `Age` among the fields.
pub fn reuse(
    status: u16,
    stored: &[(String, Vec<u8>)],
    mut fields: Headers,
    age: Option<Duration>,
    req: &[(String, Vec<u8>)],
) -> Reuse {
    if let Some(age) = age {
        fields.retain(|(k, _)| !k.eq_ignore_ascii_case("age"));
        fields.push(("Age".into(), age.as_secs().to_string().into_bytes()));
    }
    if policy::precondition_failed(req, stored) {
        return Reuse::PreconditionFailed;
    }
    if policy::not_modified(req, stored) {
        fields.retain(|(k, _)| !k.to_ascii_lowercase().starts_with("content-"));
        return Reuse::NotModified(fields);
    }
    if status == 200 {
        fields.retain(|(k, _)| !k.eq_ignore_ascii_case("accept-ranges"));
        fields.push(("Accept-Ranges".into(), b"bytes".to_vec()));
    }
    let conditional = req.iter().any(|(k, _)| {
        crate::http::CONDITIONAL
            .iter()
            .any(|c| k.eq_ignore_ascii_case(c))
    });
    Reuse::Whole {
        fields,
        conditional,
    }
}

/// What a whole answer (`fields`, as [`reuse`] gives them) of a stored `status` with fields
/// `stored` and a body of `len` bytes gives a request with fields `req` that may ask for a
/// `Range` (RFC 9110 §14, by `policy::range`: one range, `If-Range` by strong `ETag` or
/// exact `Last-Modified`; a multi-range or an `If-Range` that does not match is answered
/// whole). Only a `200` has ranges here.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    /// The whole answer, these fields.
    Whole(Headers),
    /// `206`: bytes `first..=last`, the fields with their `Content-Range`.
    Part {
        fields: Headers,
        first: u64,
        last: u64,
    },
    /// `416`: only a `Content-Range: bytes */LEN`.
    Unsatisfiable(Headers),
}

/// See [`Ranged`]; `cached` and the workers answer every range of a stored object with it.
pub fn ranged(
    status: u16,
    stored: &[(String, Vec<u8>)],
    mut fields: Headers,
    len: u64,
    req: &[(String, Vec<u8>)],
) -> Ranged {
    if status != 200 {
        return Ranged::Whole(fields);
    }
    match policy::range(req, stored, len) {
        policy::RangeAnswer::Full => Ranged::Whole(fields),
        policy::RangeAnswer::Partial(first, last) => {
            fields.push((
                "Content-Range".into(),
                format!("bytes {first}-{last}/{len}").into_bytes(),
            ));
            Ranged::Part {
                fields,
                first,
                last,
            }
        }
        policy::RangeAnswer::Unsatisfiable => Ranged::Unsatisfiable(vec![(
            "Content-Range".into(),
            format!("bytes */{len}").into_bytes(),
        )]),
    }
}

impl Object {
    /// Current age (RFC 9111 §4.2.3: corrected initial age plus resident time).
    pub fn age(&self, now: SystemTime) -> Duration {
        current_age(self.initial_age, self.response_time, now)
    }

    /// Whether it may answer a request with `rules` at `now` without the origin (a file:
    /// always, as `cached` serves one while it is unchanged on disk, see [`FileId::matches`]).
    pub fn fresh(&self, now: SystemTime, rules: &RequestRules) -> bool {
        self.file.is_some()
            || policy::usable(
                self.age(now),
                self.lifetime,
                self.must_revalidate,
                self.no_cache,
                rules,
            ) == Use::Fresh
    }

    /// The `ttl=` its `Cache-Status` shows at `age`, as for a hit `cached` answers.
    pub fn shown_ttl(&self, age: Duration) -> Option<u64> {
        let left = remaining(self.lifetime, age);
        (self.show_ttl && !left.is_zero()).then_some(left.as_secs())
    }

    /// The answer to a request with fields `req` at `age` from a body of `len` bytes, as
    /// `cached` writes a hit (`answer::stored`): the client's conditionals (RFC 9110
    /// §13.2.2) give a `304` without the `Content-*` fields; otherwise the whole answer, with
    /// `Age`, and for a `200` `Accept-Ranges: bytes`, or the range asked for ([`ranged`]: a
    /// `206` or `416`, which show no `ttl=`); a request with conditionals shows no `ttl=`.
    /// `None`: a precondition failed (`412`, `cached`'s).
    pub fn answer(&self, age: Duration, len: u64, req: &[(String, Vec<u8>)]) -> Option<Answer> {
        // A file has no `Age` (`cached` checks it against the disk, not a clock).
        let age = self.file.is_none().then_some(age);
        let (fields, conditional) =
            match reuse(self.status, &self.headers, self.headers.clone(), age, req) {
                Reuse::PreconditionFailed => return None,
                Reuse::NotModified(fields) => {
                    return Some(Answer {
                        status: 304,
                        fields,
                        body: None,
                        ttl: None,
                    })
                }
                Reuse::Whole {
                    fields,
                    conditional,
                } => (fields, conditional),
            };
        Some(match ranged(self.status, &self.headers, fields, len, req) {
            Ranged::Whole(fields) => Answer {
                status: self.status,
                fields,
                body: (!crate::http::bodiless(self.status)).then_some(0..len),
                ttl: match (&self.file, age) {
                    // As `cached` shows a file's: `cached.revalidate_ms`, in seconds.
                    (Some(_), _) => Some(self.lifetime.as_secs()),
                    (None, Some(age)) => self.shown_ttl(age),
                    (None, None) => None,
                }
                .filter(|_| !conditional),
            },
            Ranged::Part {
                fields,
                first,
                last,
            } => Answer {
                status: 206,
                fields,
                body: Some(first..last + 1),
                ttl: None,
            },
            Ranged::Unsatisfiable(fields) => Answer {
                status: 416,
                fields,
                body: Some(0..0),
                ttl: None,
            },
        })
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(vec![MAGIC, META_VERSION]);
        match self {
            Meta::Vary(names) => {
                e.u8(VARY);
                e.u32(names.len() as u32);
                for n in names {
                    e.bytes(n.as_bytes());
                }
            }
            Meta::Object(o) => {
                e.u8(OBJECT);
                e.u16(o.status);
                let flags = (if o.must_revalidate {
                    MUST_REVALIDATE
                } else {
                    0
                }) | (if o.no_cache { NO_CACHE } else { 0 })
                    | (if o.show_ttl { SHOW_TTL } else { 0 })
                    | (if o.file.is_some() { FILE } else { 0 });
                e.u8(flags);
                let since = o
                    .response_time
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                e.u64(millis(since));
                e.u64(millis(o.initial_age));
                e.u64(millis(o.lifetime));
                e.bytes(o.site.as_bytes());
                e.headers(&o.headers);
                if let Some(f) = &o.file {
                    e.bytes(f.path.as_bytes());
                    e.u64(f.len);
                    e.u64((f.mtime_ns >> 64) as u64);
                    e.u64(f.mtime_ns as u64);
                    e.u64(f.ino);
                }
            }
        }
        e.0
    }

    pub fn decode(b: &[u8]) -> Result<Meta, DecodeError> {
        let mut d = Dec(b);
        let magic = d.u8()?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic.into()));
        }
        let version = d.u8()?;
        if version != META_VERSION {
            return Err(DecodeError::BadVersion {
                found: version.into(),
                expected: META_VERSION.into(),
            });
        }
        let meta = match d.u8()? {
            VARY => {
                let n = d.u32()? as usize;
                // Each name needs at least 5 bytes: bound the allocation by what is there.
                if n == 0 || n > d.0.len() / 5 {
                    return Err(DecodeError::BadField("Vary field count"));
                }
                let names = (0..n)
                    .map(|_| d.string("Vary field name").and_then(token))
                    .collect::<Result<Vec<_>, _>>()?;
                Meta::Vary(names)
            }
            OBJECT => {
                let status = d.u16()?;
                if !(100..=999).contains(&status) {
                    return Err(DecodeError::BadField("status"));
                }
                let flags = d.u8()?;
                if flags & !(MUST_REVALIDATE | NO_CACHE | SHOW_TTL | FILE) != 0 {
                    return Err(DecodeError::BadField("flags"));
                }
                let response_time = UNIX_EPOCH
                    .checked_add(Duration::from_millis(d.u64()?))
                    .ok_or(DecodeError::BadField("response time"))?;
                let initial_age = Duration::from_millis(d.u64()?);
                let lifetime = Duration::from_millis(d.u64()?);
                let site = d.string("site")?;
                let headers = d.headers()?;
                for (k, v) in &headers {
                    token(k.clone())?;
                    // A line break would split the head the worker writes.
                    if v.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
                        return Err(DecodeError::BadField("field value"));
                    }
                }
                let file = if flags & FILE != 0 {
                    let path = d.string("file path")?;
                    if !path.starts_with('/') {
                        return Err(DecodeError::BadField("file path"));
                    }
                    let len = d.u64()?;
                    let hi = d.u64()?;
                    let lo = d.u64()?;
                    Some(FileId {
                        path,
                        len,
                        mtime_ns: (i128::from(hi as i64) << 64) | i128::from(lo),
                        ino: d.u64()?,
                    })
                } else {
                    None
                };
                Meta::Object(Object {
                    status,
                    headers,
                    response_time,
                    initial_age,
                    lifetime,
                    must_revalidate: flags & MUST_REVALIDATE != 0,
                    no_cache: flags & NO_CACHE != 0,
                    show_ttl: flags & SHOW_TTL != 0,
                    site,
                    file,
                })
            }
            k => return Err(DecodeError::BadKind(k.into())),
        };
        d.end()?;
        Ok(meta)
    }
}

/// `name` if it is a field name (a non-empty token).
fn token(name: String) -> Result<String, DecodeError> {
    if name.is_empty() || !name.bytes().all(crate::request::is_tchar) {
        return Err(DecodeError::BadField("field name"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Object {
        Object {
            status: 200,
            headers: vec![
                ("Content-Type".into(), b"text/plain".to_vec()),
                ("ETag".into(), b"\"1\"".to_vec()),
            ],
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            initial_age: Duration::from_secs(5),
            lifetime: Duration::from_secs(60),
            must_revalidate: true,
            no_cache: false,
            show_ttl: true,
            site: "shop".into(),
            file: None,
        }
    }

    fn file() -> Object {
        Object {
            headers: vec![("ETag".into(), b"\"f\"".to_vec())],
            lifetime: Duration::from_millis(2500),
            site: String::new(),
            file: Some(FileId {
                path: "/srv/a.txt".into(),
                len: 10,
                mtime_ns: -1_500_000_000,
                ino: 77,
            }),
            ..object()
        }
    }

    #[test]
    fn metadata_round_trips() {
        for m in [
            Meta::Object(object()),
            Meta::Object(file()),
            Meta::Vary(vec!["accept-encoding".into(), "x-user".into()]),
        ] {
            assert_eq!(Meta::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn corrupt_metadata_is_refused_never_misread() {
        let good = Meta::Object(object()).encode();
        for n in 0..good.len() {
            assert!(Meta::decode(&good[..n]).is_err(), "truncated at {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(Meta::decode(&long).is_err(), "trailing bytes");
        let mut version = good.clone();
        version[1] = META_VERSION + 1;
        assert_eq!(
            Meta::decode(&version),
            Err(DecodeError::BadVersion {
                found: (META_VERSION + 1).into(),
                expected: META_VERSION.into()
            })
        );
        let mut kind = good.clone();
        kind[2] = 9;
        assert!(Meta::decode(&kind).is_err());
        // A field value with a line break would split the head the worker writes.
        let mut o = object();
        o.headers
            .push(("X-Evil".into(), b"a\r\nSet-Cookie: x".to_vec()));
        assert!(Meta::decode(&Meta::Object(o).encode()).is_err());
        let mut o = object();
        o.headers.push(("Bad Name".into(), b"v".to_vec()));
        assert!(Meta::decode(&Meta::Object(o).encode()).is_err());
        assert!(Meta::decode(&Meta::Vary(vec![]).encode()).is_err());
        // Every single-byte change either decodes to something or is refused: no panic.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = Meta::decode(&b);
        }
    }

    #[test]
    fn freshness_ttl_and_fields_follow_cacheds_rules() {
        let o = object();
        let rules = RequestRules::of(&[]);
        let at = |s| o.response_time + Duration::from_secs(s);
        assert_eq!(o.age(at(10)), Duration::from_secs(15));
        assert!(o.fresh(at(10), &rules));
        assert!(!o.fresh(at(55), &rules), "age 60 of 60: stale");
        let strict = RequestRules::of(&[("Cache-Control".into(), b"max-age=3".to_vec())]);
        assert!(!o.fresh(at(10), &strict));
        assert_eq!(o.shown_ttl(Duration::from_secs(15)), Some(45));
        assert_eq!(o.shown_ttl(Duration::from_secs(60)), None);
        let a = o.answer(Duration::from_secs(7), 10, &[]).unwrap();
        assert_eq!((a.status, a.body, a.ttl), (200, Some(0..10), Some(53)));
        assert_eq!(a.fields[2], ("Age".to_string(), b"7".to_vec()));
        assert_eq!(
            a.fields[3],
            ("Accept-Ranges".to_string(), b"bytes".to_vec())
        );
        let field = |k: &str, v: &str| vec![(k.to_string(), v.as_bytes().to_vec())];
        // The client has it: 304, no Content-* fields, no body, no ttl.
        let nm = o
            .answer(Duration::ZERO, 10, &field("If-None-Match", "\"1\""))
            .unwrap();
        assert_eq!((nm.status, nm.body, nm.ttl), (304, None, None));
        assert!(nm.fields.iter().all(|(k, _)| k != "Content-Type"));
        assert!(nm.fields.iter().any(|(k, _)| k == "ETag"));
        // Another tag: the whole answer, but no ttl (as cached grants none then).
        let other = o
            .answer(Duration::ZERO, 10, &field("If-None-Match", "\"2\""))
            .unwrap();
        assert_eq!((other.status, other.ttl), (200, None));
        // A failed precondition is cached's to answer (412).
        assert!(o
            .answer(Duration::ZERO, 10, &field("If-Match", "\"2\""))
            .is_none());
        assert!(o
            .answer(Duration::ZERO, 10, &field("If-Match", "\"1\""))
            .is_some());
        // Ranges, as cached answers them: one range is a 206 of its bytes (no ttl), past the
        // end a 416 with only `Content-Range`, several ranges or an `If-Range` that does not
        // match the whole answer.
        let range = |v: &str, extra: &[(&str, &str)]| {
            let mut req = field("Range", v);
            req.extend(
                extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
            );
            o.answer(Duration::ZERO, 10, &req).unwrap()
        };
        let part = range("bytes=2-4", &[]);
        assert_eq!((part.status, part.body, part.ttl), (206, Some(2..5), None));
        assert!(part
            .fields
            .contains(&("Content-Range".to_string(), b"bytes 2-4/10".to_vec())));
        assert_eq!(range("bytes=-3", &[]).body, Some(7..10));
        assert_eq!(range("bytes=8-", &[]).body, Some(8..10));
        let past = range("bytes=10-", &[]);
        assert_eq!(
            (past.status, past.body, past.fields),
            (
                416,
                Some(0..0),
                vec![("Content-Range".to_string(), b"bytes */10".to_vec())]
            )
        );
        assert_eq!(range("bytes=0-1,3-4", &[]).status, 200);
        assert_eq!(range("bytes=0-1", &[("If-Range", "\"1\"")]).status, 206);
        assert_eq!(range("bytes=0-1", &[("If-Range", "\"2\"")]).status, 200);
        assert_eq!(range("bytes=0-1", &[("If-Range", "W/\"1\"")]).status, 200);
        // Only a 200 has ranges.
        let created = Object {
            status: 203,
            ..object()
        };
        let whole = created
            .answer(Duration::ZERO, 10, &field("Range", "bytes=0-1"))
            .unwrap();
        assert_eq!((whole.status, whole.body), (203, Some(0..10)));
        let long = Object {
            lifetime: Duration::from_secs(86_400),
            ..object()
        };
        assert_eq!(long.shown_ttl(Duration::ZERO), Some(3600));
    }

    #[test]
    fn a_file_is_answered_as_cached_answers_one_and_only_while_unchanged_on_disk() {
        let f = file();
        let rules = RequestRules::of(&[("Cache-Control".into(), b"max-age=0".to_vec())]);
        assert!(f.fresh(UNIX_EPOCH, &rules), "its freshness is its identity");
        let a = f.answer(Duration::from_secs(99), 10, &[]).unwrap();
        assert_eq!((a.status, a.body, a.ttl), (200, Some(0..10), Some(2)));
        assert!(a.fields.iter().all(|(k, _)| k != "Age"), "{:?}", a.fields);
        let cond = [("If-None-Match".to_string(), b"\"g\"".to_vec())];
        assert_eq!(f.answer(Duration::ZERO, 10, &cond).unwrap().ttl, None);
        let range = [("Range".to_string(), b"bytes=1-2".to_vec())];
        let part = f.answer(Duration::ZERO, 10, &range).unwrap();
        assert_eq!((part.status, part.body, part.ttl), (206, Some(1..3), None));

        let dir = std::env::temp_dir().join(format!("hit-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        let path = dir.join("a.txt");
        std::fs::write(&path, b"0123456789").unwrap();
        let id = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).unwrap();
            FileId {
                path: p.to_string_lossy().into_owned(),
                len: m.len(),
                mtime_ns: FileId::mtime_ns(&m),
                ino: m.ino(),
            }
        };
        let read = id(&path);
        assert!(read.matches());
        // Same size, another mtime.
        let t = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(!read.matches());
        let read = id(&path);
        std::fs::write(&path, b"longer than before").unwrap();
        assert!(!read.matches(), "another size");
        let read = id(&path);
        // A symlink in its place, to the same file: not the path read.
        let moved = dir.join("moved.txt");
        std::fs::rename(&path, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &path).unwrap();
        assert!(!read.matches(), "a symlink took the file's place");
        std::fs::remove_file(&path).unwrap();
        assert!(!read.matches(), "gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_and_answerable_requests() {
        assert_eq!(key("a.test", "/x?y"), "http://a.test/x?y");
        let vary = vec!["accept-encoding".to_string()];
        let gz = [("Accept-Encoding".to_string(), b"gzip".to_vec())];
        let br = [("Accept-Encoding".to_string(), b"br".to_vec())];
        let k = |stub, req: &[(String, Vec<u8>)]| variant_key("k", stub, &vary, req);
        assert_ne!(k(1, &gz), k(1, &br));
        assert_ne!(k(1, &gz), k(2, &gz), "a new stub hides older variants");
        assert!(answerable("GET", &gz));
        assert!(answerable("HEAD", &[]));
        assert!(answerable(
            "GET",
            &[("If-None-Match".into(), b"x".to_vec())]
        ));
        assert!(!answerable("POST", &[]));
        assert!(!answerable(
            "GET",
            &[("Authorization".into(), b"x".to_vec())]
        ));
        for h in ["Range", "If-Range"] {
            assert!(answerable("GET", &[(h.to_string(), b"x".to_vec())]), "{h}");
        }
    }
}

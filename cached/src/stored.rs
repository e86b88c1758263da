//! A complete stored answer and how it is checked before it is served again: an origin
//! answer by its freshness (RFC 9111, through `common::cache_policy`), a file by its size,
//! mtime and inode. Pure data and arithmetic over it; the cache (`cache`) holds these in
//! `Arc`s, so an answer evicted while a worker thread still streams it lives until that
//! thread is done.
//!
//! One copy of every body: an answer published in the shared arena keeps only its head here
//! and a [`Body::Arena`] reference to the record (`Ctx::store` switches it once `published`
//! copied it in); files, `206` pieces and answers the arena refused keep a [`Body::Owned`].
//! `Ctx::stored` pins an arena body for the request that looked it up ([`Body::Pinned`]):
//! the record stays intact until that request is done with it, and an answer copies out
//! only the bytes it sends ([`Body::write_range`]), straight into the segment.

use common::arena::Pinned;
use common::cache_policy::{self as policy, RequestRules, Staleness, Storable, Use};
use common::http::Headers;
use std::io::{self, Write};
use std::sync::Arc;

/// Bytes copied out of a pinned record per write.
const COPY_PIECE: usize = 64 << 10;
use std::time::{Duration, SystemTime};

/// How a stored object is checked before it is served again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validity {
    /// A file: served while its size, mtime and inode are unchanged.
    File { len: u64, mtime_ns: i128, ino: u64 },
    /// An origin answer: fresh for `lifetime` from its (corrected) initial age.
    Http {
        lifetime: Duration,
        must_revalidate: bool,
        no_cache: bool,
        /// How long past `lifetime` it may be served while one refresh runs in the
        /// background (`stale-while-revalidate`, RFC 5861 §3).
        stale_while_revalidate: Duration,
        /// How long past `lifetime` it may be served when the origin fails
        /// (`stale-if-error`, RFC 5861 §4).
        stale_if_error: Duration,
    },
}

/// The body of a stored answer: its bytes, or where the arena keeps them.
#[derive(Clone, Debug)]
pub enum Body {
    /// Shared, so a refresh after a 304 keeps the bytes without copying them.
    Owned(Arc<Vec<u8>>),
    /// Published in the arena, which alone holds the bytes.
    Arena(ArenaBody),
    /// The same, pinned for one request (never stored in the cache: `Ctx::store` keeps the
    /// reference instead).
    Pinned(Arc<Pinned>, ArenaBody),
}

/// Where the arena keeps a body: the record's key (with its `Vary` variant), and the body's
/// length and checksum, which a second chance keeps (its generation changes) and a
/// replacement under the same key almost surely does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaBody {
    pub key: String,
    pub len: u64,
    pub sum: u64,
}

impl Body {
    pub fn owned(bytes: Vec<u8>) -> Body {
        Body::Owned(Arc::new(bytes))
    }

    /// The body's length, wherever it is kept.
    pub fn len(&self) -> u64 {
        match self {
            Body::Owned(b) => b.len() as u64,
            Body::Arena(a) | Body::Pinned(_, a) => a.len,
        }
    }

    /// Writes `len` bytes from `from` to `out`, copied from wherever the body is kept (from a
    /// pinned record in pieces, never as a slice of the shared mapping). An arena body that
    /// is not pinned has no bytes here: `InvalidData`.
    pub fn write_range(&self, out: &mut impl Write, from: u64, len: u64) -> io::Result<()> {
        let end = from.saturating_add(len);
        if end > self.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "past the body"));
        }
        match self {
            Body::Owned(b) => out.write_all(&b[from as usize..end as usize]),
            Body::Pinned(p, _) => {
                let mut buf = vec![0; (len as usize).min(COPY_PIECE)];
                let mut at = from;
                while at < end {
                    let want = ((end - at) as usize).min(buf.len());
                    let n = p.read_body(at, &mut buf[..want]);
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "record short"));
                    }
                    out.write_all(&buf[..n])?;
                    at += n as u64;
                }
                Ok(())
            }
            Body::Arena(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an arena body that is not pinned",
            )),
        }
    }

    /// The reference to keep in the cache for this body (a pin is let go).
    pub fn unpinned(&self) -> Body {
        match self {
            Body::Pinned(_, a) => Body::Arena(a.clone()),
            b => b.clone(),
        }
    }

    /// The bytes, when this process holds them (`None`: read them from the arena first).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Body::Owned(b) => Some(b.as_slice()),
            Body::Arena(_) | Body::Pinned(..) => None,
        }
    }

    /// Bytes of this body held in cached's own memory.
    pub fn owned_len(&self) -> u64 {
        match self {
            Body::Owned(b) => b.len() as u64,
            Body::Arena(_) | Body::Pinned(..) => 0,
        }
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::owned(Vec::new())
    }
}

/// The fields of a stored answer in one allocation: each name and value after its length
/// (u32, little-endian). A cache holds tens of thousands of heads; as a `Vec` of `String`
/// and `Vec<u8>` pairs each cost two allocations per field, about 550 bytes more per entry
/// than this (measured: 20,000 heads of six fields, 10 MiB). Code that works on the fields
/// takes them out as a [`Headers`] list ([`Fields::to_vec`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields(Box<[u8]>);

impl Fields {
    /// Each field as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let mut take = || {
                let (len, tail) = rest.split_first_chunk::<4>()?;
                let (item, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
                rest = tail;
                Some(item)
            };
            let name = std::str::from_utf8(take()?).ok()?;
            Some((name, take()?))
        })
    }

    /// The first value of field `name` (names compare ASCII case-insensitively), as
    /// [`common::http::header`] reads a header list.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The fields as a header list.
    pub fn to_vec(&self) -> Headers {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    /// Bytes of the names and values.
    pub fn payload_len(&self) -> usize {
        self.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Changes the fields as a header list.
    pub fn edit(&mut self, f: impl FnOnce(&mut Headers)) {
        let mut h = self.to_vec();
        f(&mut h);
        *self = Fields::from(h);
    }
}

impl From<&[(String, Vec<u8>)]> for Fields {
    fn from(h: &[(String, Vec<u8>)]) -> Fields {
        let size = h.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut b = Vec::with_capacity(size);
        for (k, v) in h {
            for part in [k.as_bytes(), v.as_slice()] {
                // A head is bounded by MAX_HEAD (1 MiB): a length always fits.
                b.extend_from_slice(&(part.len() as u32).to_le_bytes());
                b.extend_from_slice(part);
            }
        }
        Fields(b.into_boxed_slice())
    }
}

impl From<Headers> for Fields {
    fn from(h: Headers) -> Fields {
        Fields::from(h.as_slice())
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(k, v)| (k, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// A complete stored answer.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    /// End-to-end headers, without framing (`Content-Length`/`Transfer-Encoding`).
    pub headers: Fields,
    pub body: Body,
    pub validity: Validity,
    /// When the answer was received (RFC 9111 `response_time`).
    pub response_time: SystemTime,
    /// Its corrected initial age (RFC 9111 §4.2.3).
    pub initial_age: Duration,
}

impl Validity {
    /// The validity of an origin answer `policy::storable` accepted.
    pub fn http(s: &Storable) -> Validity {
        Validity::Http {
            lifetime: s.lifetime,
            must_revalidate: s.must_revalidate,
            no_cache: s.no_cache,
            stale_while_revalidate: s.stale_while_revalidate,
            stale_if_error: s.stale_if_error,
        }
    }
}

impl Stored {
    /// How stale an origin answer is at `now`, and what its directives allow then (`None`
    /// for files).
    pub fn staleness(&self, now: SystemTime) -> Option<Staleness> {
        match self.validity {
            Validity::Http {
                lifetime,
                must_revalidate,
                no_cache,
                stale_while_revalidate,
                stale_if_error,
            } => Some(Staleness {
                stale_by: self.age(now).saturating_sub(lifetime),
                must_revalidate,
                no_cache,
                stale_while_revalidate,
                stale_if_error,
            }),
            Validity::File { .. } => None,
        }
    }

    /// How this origin answer may serve a request with `rules` at `now` (RFC 9111 §4;
    /// `None` for files, which are checked against the file instead).
    pub fn usable(&self, now: SystemTime, rules: &RequestRules) -> Option<Use> {
        match self.validity {
            Validity::Http {
                lifetime,
                must_revalidate,
                no_cache,
                ..
            } => Some(policy::usable(
                self.age(now),
                lifetime,
                must_revalidate,
                no_cache,
                rules,
            )),
            Validity::File { .. } => None,
        }
    }

    /// What keeping this answer under `key` costs the cache's capacity: the body bytes held
    /// here (none for a body in the arena, which bounds its own bytes), fields, key and a
    /// fixed overhead for the entry's bookkeeping.
    pub fn cost(&self, key: &str) -> u64 {
        let headers = self.headers.payload_len() + 16 * self.headers.len();
        self.body.owned_len() + (headers + key.len() + 128) as u64
    }

    /// The same answer with its body kept elsewhere (`body`).
    pub fn with_body(&self, body: Body) -> Stored {
        Stored {
            status: self.status,
            headers: self.headers.clone(),
            body,
            validity: self.validity.clone(),
            response_time: self.response_time,
            initial_age: self.initial_age,
        }
    }

    /// Current age (RFC 9111 §4.2.3: corrected initial age plus resident time).
    pub fn age(&self, now: SystemTime) -> Duration {
        common::hit::current_age(self.initial_age, self.response_time, now)
    }
}

/// A bodiless HTTP/1.1 request from 127.0.0.1 with these fields: what the unit tests send.
#[cfg(test)]
pub fn request_for_test(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> common::protocol::RequestHead {
    common::protocol::RequestHead {
        method: method.into(),
        target: target.into(),
        version: 11,
        client: "127.0.0.1".into(),
        body: common::protocol::BodyLen::None,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

/// A fresh origin answer of status 200 with `headers` and `body`, stored now for a minute:
/// what the unit tests of the cache and of the arena copy store.
#[cfg(test)]
pub fn fresh_for_test(headers: Vec<(String, Vec<u8>)>, body: &[u8]) -> Stored {
    Stored {
        status: 200,
        headers: headers.into(),
        body: Body::owned(body.to_vec()),
        validity: Validity::Http {
            lifetime: Duration::from_secs(60),
            must_revalidate: false,
            no_cache: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        },
        response_time: SystemTime::now(),
        initial_age: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_every_field_in_order_in_one_allocation() {
        let h: Headers = vec![
            ("ETag".into(), b"\"a\"".to_vec()),
            ("x-empty".into(), Vec::new()),
            ("Set-Cookie".into(), b"a=1".to_vec()),
            ("set-cookie".into(), vec![0x80, 0xff, b' ', 0]),
        ];
        let f = Fields::from(h.clone());
        assert_eq!(f.to_vec(), h);
        assert_eq!(f.len(), 4);
        assert_eq!(f.get("SET-COOKIE"), Some(&b"a=1"[..]));
        assert_eq!(f.get("x-empty"), Some(&b""[..]));
        assert_eq!(f.get("vary"), None);
        assert_eq!(f.payload_len(), 4 + 3 + 7 + 10 + 3 + 10 + 4);
        assert_eq!(Fields::from(Vec::new()).to_vec(), Headers::new());
        assert_eq!(Fields::default().len(), 0);
        let mut e = f.clone();
        e.edit(|h| h.retain(|(k, _)| !k.eq_ignore_ascii_case("set-cookie")));
        assert_eq!(e.to_vec(), h[..2].to_vec());
        assert_ne!(e, f);
    }

    fn stored(lifetime: u64, initial_age: u64, headers: &[(&str, &str)]) -> Stored {
        Stored {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<Headers>()
                .into(),
            body: Body::owned(vec![0; 1000]),
            validity: Validity::Http {
                lifetime: Duration::from_secs(lifetime),
                must_revalidate: false,
                no_cache: false,
                stale_while_revalidate: Duration::from_secs(30),
                stale_if_error: Duration::ZERO,
            },
            response_time: SystemTime::UNIX_EPOCH,
            initial_age: Duration::from_secs(initial_age),
        }
    }

    #[test]
    fn age_and_staleness_count_from_the_corrected_initial_age() {
        let s = stored(60, 10, &[]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(70);
        assert_eq!(s.age(now), Duration::from_secs(80));
        let st = s.staleness(now).unwrap();
        assert_eq!(st.stale_by, Duration::from_secs(20));
        assert_eq!(st.stale_while_revalidate, Duration::from_secs(30));
        let rules = RequestRules::of(&[]);
        assert_eq!(s.usable(now, &rules), Some(Use::Revalidate));
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(s.usable(early, &rules), Some(Use::Fresh));
    }

    #[test]
    fn the_cost_counts_body_fields_and_key() {
        let bare = stored(1, 0, &[]).cost("k");
        assert_eq!(bare, 1000 + 1 + 128);
        assert_eq!(stored(1, 0, &[("ab", "cd")]).cost("k"), bare + 2 + 2 + 16);
        let s = stored(1, 0, &[]);
        let in_arena = s.with_body(Body::Arena(ArenaBody {
            key: "k".into(),
            len: 1000,
            sum: 7,
        }));
        assert_eq!(
            in_arena.cost("k"),
            1 + 128,
            "the arena holds the body, not we"
        );
        assert_eq!(in_arena.body.len(), 1000);
    }

    #[test]
    fn files_have_no_http_freshness() {
        let mut s = stored(1, 0, &[]);
        s.validity = Validity::File {
            len: 1,
            mtime_ns: 2,
            ino: 3,
        };
        let now = SystemTime::now();
        assert!(s.staleness(now).is_none());
        assert!(s.usable(now, &RequestRules::of(&[])).is_none());
    }
}

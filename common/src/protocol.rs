//! The wire formats between the daemons, in one place, encoded field by field (little
//! endian) and validated completely before use:
//! - [`Doorbell`]: the small fixed mq message "segment N (generation G) has work for you";
//! - [`RequestHead`]: first bytes of the request stream the worker writes into the segment;
//! - [`ResponseHead`]: first bytes of the response stream `cached` writes back (or, for a
//!   collapsed waiter whose fill is streamed into the arena, only a [`FollowArena`] pointer).
//!
//! Heads are length-prefixed (`u32`), so a reader knows how many bytes to collect across
//! chunks before decoding; the body follows immediately.

use crate::http::CacheOutcome;
use std::io::{self, Read};

pub const MAGIC: u32 = u32::from_le_bytes(*b"SHPX");
pub const VERSION: u16 = 5;
/// Size of an encoded doorbell; the queue's message size is [`MSG_SIZE`].
pub const DOORBELL_LEN: usize = 32;
pub const MSG_SIZE: usize = 64;
/// Longest head either side accepts (a head is also bounded by what fits the stream).
pub const MAX_HEAD: usize = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    BadMagic(u32),
    BadVersion {
        found: u16,
        expected: u16,
    },
    BadKind(u16),
    /// A cache outcome value no [`CacheOutcome`] has.
    BadOutcome(u8),
    Truncated,
    TooLong(usize),
    BadField(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:#x}"),
            DecodeError::BadVersion { found, expected } => {
                write!(f, "protocol version {found}, expected {expected}")
            }
            DecodeError::BadKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::BadOutcome(o) => write!(f, "unknown cache outcome {o}"),
            DecodeError::Truncated => write!(f, "truncated message"),
            DecodeError::TooLong(n) => write!(f, "head of {n} bytes is too long"),
            DecodeError::BadField(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// What a doorbell asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request stream waits in the segment.
    Request = 1,
    /// Drop the stored object named by the request in the segment (PURGE).
    Purge = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbell {
    pub kind: Kind,
    pub index: u32,
    pub generation: u32,
    pub request_id: u64,
    /// Which pool the segment belongs to (a restarted master makes a new one).
    pub pool_id: u64,
}

impl Doorbell {
    pub fn encode(&self) -> [u8; DOORBELL_LEN] {
        let mut b = [0u8; DOORBELL_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.index.to_le_bytes());
        b[12..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.request_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.pool_id.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Doorbell, DecodeError> {
        if b.len() != DOORBELL_LEN {
            return Err(DecodeError::Truncated);
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if u32_at(0) != MAGIC {
            return Err(DecodeError::BadMagic(u32_at(0)));
        }
        if u16_at(4) != VERSION {
            return Err(DecodeError::BadVersion {
                found: u16_at(4),
                expected: VERSION,
            });
        }
        let kind = match u16_at(6) {
            1 => Kind::Request,
            2 => Kind::Purge,
            k => return Err(DecodeError::BadKind(k)),
        };
        Ok(Doorbell {
            kind,
            index: u32_at(8),
            generation: u32_at(12),
            request_id: u64_at(16),
            pool_id: u64_at(24),
        })
    }
}

/// How a body is framed in the stream: it always ends at the chunk marked LAST; the
/// declared length, when known, lets the reader check nothing is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLen {
    /// No body at all (HEAD answer, 204, 304, or a request without body).
    None,
    Exact(u64),
    /// Length unknown until the stream ends (chunked upstream, streamed through).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as the client sent it (origin-form).
    pub target: String,
    /// 10 for HTTP/1.0, 11 for HTTP/1.1.
    pub version: u8,
    pub client: String,
    pub body: BodyLen,
    /// End-to-end headers (hop-by-hop already removed), in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub body: BodyLen,
    /// How cached produced the answer: the value of `X-Cache`.
    pub outcome: CacheOutcome,
    /// The remaining freshness of a hit everyone may reuse as it is, which its
    /// `Cache-Status` shows as `ttl=` (0: none shown). Set only for complete, shareable,
    /// fresh answers without `Vary`.
    pub ttl_ms: u32,
    /// The origin's status when the origin took part in this answer (0: it did not).
    pub upstream_status: u16,
    /// Row of the site that answered in cached's table of sites (`stats::NO_SITE`: none, as
    /// in disk mode). Any value decodes; a reader looks it up and finds no row past the table.
    pub site: u16,
    /// Set: no body follows in the segment; the answer is the object `cached` is filling in
    /// the shared arena under this key (a collapsed waiter's), which the worker streams from
    /// there, freeing the segment at once. `status`, `body` and `headers` are then unused.
    pub follow: Option<FollowArena>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// An arena record a worker is told to follow ([`ResponseHead::follow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowArena {
    /// The record's arena key (`common::hit::key`).
    pub key: String,
    /// Its generation when `cached` answered (a newer one of the key is as good). 0 (no
    /// record has it): the fill has no record yet (its head has not come, and segments run
    /// short): look for the key in the arena a while, then ask `cached` again.
    pub generation: u64,
}

/// The little-endian, length-prefixed encoding of the wire messages (also of the arena's
/// metadata, `hit`).
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v)
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v)
    }
    fn body(&mut self, b: BodyLen) {
        match b {
            BodyLen::None => {
                self.u8(0);
                self.u64(0)
            }
            BodyLen::Exact(n) => {
                self.u8(1);
                self.u64(n)
            }
            BodyLen::Unknown => {
                self.u8(2);
                self.u64(0)
            }
        }
    }
    pub(crate) fn headers(&mut self, h: &[(String, Vec<u8>)]) {
        self.u32(h.len() as u32);
        for (k, v) in h {
            self.bytes(k.as_bytes());
            self.bytes(v);
        }
    }
    /// Prefixes the total length.
    fn framed(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.0.len());
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

pub(crate) struct Dec<'a>(pub(crate) &'a [u8]);

impl<'a> Dec<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::BadField(what))
    }
    fn body(&mut self) -> Result<BodyLen, DecodeError> {
        let kind = self.u8()?;
        let n = self.u64()?;
        // Canonical encodings only: a length beside "none" or "unknown" is rejected.
        match (kind, n) {
            (0, 0) => Ok(BodyLen::None),
            (1, n) => Ok(BodyLen::Exact(n)),
            (2, 0) => Ok(BodyLen::Unknown),
            _ => Err(DecodeError::BadField("body framing")),
        }
    }
    fn outcome(&mut self) -> Result<CacheOutcome, DecodeError> {
        let v = self.u8()?;
        CacheOutcome::from_wire(v).ok_or(DecodeError::BadOutcome(v))
    }
    pub(crate) fn headers(&mut self) -> Result<Vec<(String, Vec<u8>)>, DecodeError> {
        let n = self.u32()? as usize;
        // Each header needs at least 8 bytes: bound the allocation by what is there.
        if n > self.0.len() / 8 {
            return Err(DecodeError::Truncated);
        }
        let mut h = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.string("header name")?;
            h.push((k, self.bytes()?.to_vec()));
        }
        Ok(h)
    }
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::BadField("trailing bytes"))
        }
    }
}

fn first<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Reads one length-prefixed head from a stream.
pub fn read_head(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            DecodeError::TooLong(len),
        ));
    }
    let mut buf = vec![0u8; len + 4];
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    r.read_exact(&mut buf[4..])?;
    Ok(buf)
}

fn unframe(b: &[u8]) -> Result<Dec<'_>, DecodeError> {
    let mut d = Dec(b);
    let n = d.u32()? as usize;
    if n != d.0.len() {
        return Err(DecodeError::Truncated);
    }
    Ok(d)
}

impl RequestHead {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(256));
        e.bytes(self.method.as_bytes());
        e.bytes(self.target.as_bytes());
        e.u8(self.version);
        e.bytes(self.client.as_bytes());
        e.body(self.body);
        e.headers(&self.headers);
        e.framed()
    }

    pub fn decode(b: &[u8]) -> Result<RequestHead, DecodeError> {
        let mut d = unframe(b)?;
        let method = d.string("method")?;
        if method.is_empty() || !method.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(DecodeError::BadField("method"));
        }
        let target = d.string("target")?;
        let version = d.u8()?;
        if version != 10 && version != 11 {
            return Err(DecodeError::BadField("version"));
        }
        let head = RequestHead {
            method,
            target,
            version,
            client: d.string("client")?,
            body: d.body()?,
            headers: d.headers()?,
        };
        d.end()?;
        Ok(head)
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first(&self.headers, name)
    }
}

impl ResponseHead {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(256));
        e.u16(self.status);
        e.body(self.body);
        e.u8(self.outcome.wire());
        e.u32(self.ttl_ms);
        e.u16(self.upstream_status);
        e.u16(self.site);
        match &self.follow {
            None => e.u8(0),
            Some(f) => {
                e.u8(1);
                e.bytes(f.key.as_bytes());
                e.u64(f.generation);
            }
        }
        e.headers(&self.headers);
        e.framed()
    }

    pub fn decode(b: &[u8]) -> Result<ResponseHead, DecodeError> {
        let mut d = unframe(b)?;
        let status = d.u16()?;
        if !(100..=999).contains(&status) {
            return Err(DecodeError::BadField("status"));
        }
        let head = ResponseHead {
            status,
            body: d.body()?,
            outcome: d.outcome()?,
            ttl_ms: d.u32()?,
            upstream_status: d.u16()?,
            site: d.u16()?,
            follow: match d.u8()? {
                0 => None,
                1 => Some(FollowArena {
                    key: d.string("follow key")?,
                    generation: d.u64()?,
                }),
                _ => return Err(DecodeError::BadField("follow")),
            },
            headers: d.headers()?,
        };
        d.end()?;
        Ok(head)
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first(&self.headers, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> RequestHead {
        RequestHead {
            method: "POST".into(),
            target: "/a?b=c".into(),
            version: 11,
            client: "127.0.0.1".into(),
            body: BodyLen::Exact(12),
            headers: vec![
                ("Host".into(), b"x".to_vec()),
                ("X-A".into(), b"1".to_vec()),
            ],
        }
    }

    #[test]
    fn doorbell_round_trips_and_is_pinned() {
        let d = Doorbell {
            kind: Kind::Request,
            index: 3,
            generation: 9,
            request_id: 77,
            pool_id: 5,
        };
        let b = d.encode();
        assert_eq!(&b[0..4], b"SHPX");
        assert_eq!(b[8], 3);
        assert_eq!(Doorbell::decode(&b), Ok(d));
        const { assert!(DOORBELL_LEN <= MSG_SIZE) };
    }

    #[test]
    fn every_truncated_or_corrupt_doorbell_is_rejected() {
        let b = Doorbell {
            kind: Kind::Purge,
            index: 1,
            generation: 2,
            request_id: 3,
            pool_id: 4,
        }
        .encode();
        for n in 0..b.len() {
            assert!(Doorbell::decode(&b[..n]).is_err());
        }
        let mut bad = b;
        bad[0] ^= 1;
        assert!(matches!(
            Doorbell::decode(&bad),
            Err(DecodeError::BadMagic(_))
        ));
        let mut bad = b;
        bad[4] = 9;
        assert!(matches!(
            Doorbell::decode(&bad),
            Err(DecodeError::BadVersion { .. })
        ));
        let mut bad = b;
        bad[6] = 9;
        assert_eq!(Doorbell::decode(&bad), Err(DecodeError::BadKind(9)));
    }

    #[test]
    fn heads_round_trip_and_truncations_are_rejected() {
        let r = sample_request();
        let b = r.encode();
        assert_eq!(RequestHead::decode(&b), Ok(r.clone()));
        assert_eq!(r.header("host"), Some(&b"x"[..]));
        for n in 0..b.len() {
            assert!(RequestHead::decode(&b[..n]).is_err(), "accepted {n} bytes");
        }
        let resp = ResponseHead {
            status: 200,
            body: BodyLen::Unknown,
            outcome: CacheOutcome::Miss,
            ttl_ms: 5,
            upstream_status: 304,
            site: 0x0102,
            follow: None,
            headers: vec![("ETag".into(), b"\"x\"".to_vec())],
        };
        let b = resp.encode();
        // Pinned: length, status, framing (9), outcome, ttl_ms, upstream_status, site.
        assert_eq!(&b[4..6], &200u16.to_le_bytes());
        assert_eq!(&b[16..20], &5u32.to_le_bytes());
        assert_eq!(&b[20..22], &304u16.to_le_bytes());
        assert_eq!(&b[22..24], &[0x02, 0x01]);
        assert_eq!(b[24], 0, "no arena record to follow");
        assert_eq!(ResponseHead::decode(&b), Ok(resp.clone()));
        for n in 0..b.len() {
            assert!(ResponseHead::decode(&b[..n]).is_err());
        }
        // A collapsed waiter told to follow an arena record.
        let follow = ResponseHead {
            follow: Some(FollowArena {
                key: "a.test /x".into(),
                generation: 0x0102_0304_0506,
            }),
            ..resp
        };
        let b = follow.encode();
        assert_eq!(b[24], 1);
        assert_eq!(ResponseHead::decode(&b), Ok(follow));
        for n in 0..b.len() {
            assert!(ResponseHead::decode(&b[..n]).is_err());
        }
        let mut bad = b.clone();
        bad[24] = 2;
        assert_eq!(
            ResponseHead::decode(&bad),
            Err(DecodeError::BadField("follow"))
        );
    }

    /// Every byte value of the outcome field: the outcomes' own values decode to them, any
    /// other is refused.
    #[test]
    fn outcome_decode_is_checked_for_every_value() {
        let mut head = ResponseHead {
            status: 200,
            body: BodyLen::None,
            outcome: CacheOutcome::Hit,
            ttl_ms: 0,
            upstream_status: 0,
            site: 0,
            follow: None,
            headers: Vec::new(),
        };
        let mut seen = Vec::new();
        for &o in CacheOutcome::ALL {
            head.outcome = o;
            assert_eq!(ResponseHead::decode(&head.encode()), Ok(head.clone()));
            assert_eq!(CacheOutcome::from_wire(o.wire()), Some(o));
            assert!(!seen.contains(&o.wire()), "wire value {} reused", o.wire());
            seen.push(o.wire());
        }
        let mut b = head.encode();
        // length (4), status (2), framing (9): then the outcome.
        let at = 4 + 2 + 9;
        for v in 0..=u8::MAX {
            b[at] = v;
            match ResponseHead::decode(&b) {
                Ok(h) => assert!(seen.contains(&v) && h.outcome.wire() == v, "{v}"),
                Err(e) => {
                    assert!(!seen.contains(&v), "{v}");
                    assert_eq!(e, DecodeError::BadOutcome(v));
                }
            }
        }
    }

    #[test]
    fn read_head_collects_across_reads() {
        let b = sample_request().encode();
        let mut stream = b.clone();
        stream.extend_from_slice(b"body bytes..");
        let mut r = &stream[..];
        assert_eq!(read_head(&mut r).unwrap(), b);
        assert_eq!(r, b"body bytes..");
    }
}

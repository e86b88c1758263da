//! The worker's L1: a small byte-bounded cache (`common::lru`) of hot, complete, shareable
//! answers, served without any segment round trip. An entry lives no longer than the
//! lifetime `cached` granted it (`l1_ttl_ms`, never past the object's freshness), and the
//! whole L1 is dropped whenever the pool's invalidation counter moves (a PURGE or an unsafe
//! method anywhere).

use common::lru::Lru;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One stored answer, ready to send: the status, the header lines that do not change
/// (everything but `Date`, `Age` and connection framing), and the body.
pub struct Entry {
    pub status: u16,
    pub fixed_headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Name of the site that answered in cached (for the access log of an L1 hit).
    pub site: Option<Arc<str>>,
    /// `Age` when stored, and when that was.
    age: u64,
    stored: Instant,
    expires: Instant,
}

impl Entry {
    pub fn age(&self) -> u64 {
        self.age.saturating_add(self.stored.elapsed().as_secs())
    }

    /// Seconds this entry stays fresh (its remaining freshness lifetime, capped as the
    /// lifetime cached granted was).
    pub fn ttl_secs(&self) -> u64 {
        self.expires
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

pub struct L1 {
    capacity: u64,
    max_object: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    epoch: u64,
    lru: Lru<Arc<Entry>>,
}

/// Is this request one the L1 may answer (no conditionals or ranges, credentials or
/// request cache directives, which need cached's full rules)?
pub fn eligible(method: &str, headers: &[(String, Vec<u8>)]) -> bool {
    // Also credentials and request cache directives: cached applies the full rules.
    const BYPASS: &[&str] = &["authorization", "cache-control", "pragma"];
    (method == "GET" || method == "HEAD")
        && !headers.iter().any(|(k, _)| {
            BYPASS
                .iter()
                .chain(common::http::CONDITIONAL)
                .any(|b| k.eq_ignore_ascii_case(b))
        })
}

/// An entry's key: the normalised host and the target (an answer reflecting `Host` is
/// never served to another host).
pub fn key(host: &str, target: &str) -> String {
    let mut k = String::with_capacity(host.len() + target.len());
    k.push_str(host);
    k.push_str(target);
    k
}

fn cost(key: &str, e: &Entry) -> u64 {
    (key.len() + e.fixed_headers.len() + e.body.len() + e.site.as_ref().map_or(0, |s| s.len()) + 96)
        as u64
}

impl L1 {
    pub fn new(capacity: u64, max_object: u64) -> L1 {
        L1 {
            capacity,
            max_object,
            inner: Mutex::new(Inner {
                epoch: 0,
                lru: Lru::new(capacity),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops everything if the invalidation counter moved; returns whether it did.
    pub fn sync_epoch(&self, epoch: u64) -> bool {
        let mut inner = self.lock();
        if inner.epoch == epoch {
            return false;
        }
        inner.epoch = epoch;
        inner.lru.clear();
        true
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let mut inner = self.lock();
        let entry = inner.lru.get(key)?.clone();
        if Instant::now() >= entry.expires {
            inner.lru.remove(key);
            return None;
        }
        Some(entry)
    }

    /// Whether an object of `len` bytes may go in at all.
    pub fn accepts(&self, len: usize) -> bool {
        self.capacity > 0 && len as u64 <= self.max_object
    }

    /// Stores an answer fetched while the invalidation counter read `epoch`; ignored if it
    /// moved since (the answer may predate a purge).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        epoch: u64,
        key: String,
        status: u16,
        fixed_headers: Vec<u8>,
        body: Vec<u8>,
        age: u64,
        ttl: Duration,
        site: Option<Arc<str>>,
    ) {
        let entry = Entry {
            status,
            fixed_headers,
            body,
            site,
            age,
            stored: Instant::now(),
            expires: Instant::now() + ttl,
        };
        let c = cost(&key, &entry);
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        // An entry larger than the whole L1 is not stored (`Lru::insert` refuses it).
        inner.lru.insert(key, Arc::new(entry), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_epochs_flush() {
        let l1 = L1::new(10_000, 1000);
        l1.insert(
            0,
            "/a".into(),
            200,
            vec![],
            b"x".to_vec(),
            0,
            Duration::from_secs(60),
            None,
        );
        l1.insert(
            0,
            "/b".into(),
            200,
            vec![],
            b"y".to_vec(),
            0,
            Duration::ZERO,
            None,
        );
        assert!(l1.get("/a").is_some());
        assert!(l1.get("/b").is_none(), "expired");
        assert!(!l1.sync_epoch(0));
        assert!(l1.sync_epoch(1));
        assert!(l1.get("/a").is_none(), "flushed");
        l1.insert(
            0,
            "/c".into(),
            200,
            vec![],
            b"z".to_vec(),
            0,
            Duration::from_secs(60),
            None,
        );
        assert!(l1.get("/c").is_none(), "stale epoch: not stored");
    }

    #[test]
    fn an_entry_keeps_the_site_that_answered() {
        let l1 = L1::new(10_000, 1000);
        let site: Arc<str> = Arc::from("shop");
        l1.insert(
            0,
            "a.test/x".into(),
            200,
            vec![],
            b"x".to_vec(),
            0,
            Duration::from_secs(60),
            Some(site.clone()),
        );
        assert_eq!(l1.get("a.test/x").unwrap().site, Some(site));
    }

    #[test]
    fn bounded_in_bytes() {
        let l1 = L1::new(1000, 1000);
        for i in 0..20 {
            l1.insert(
                0,
                format!("/{i}"),
                200,
                vec![],
                vec![0; 200],
                0,
                Duration::from_secs(60),
                None,
            );
        }
        let held = (0..20)
            .filter(|i| l1.get(&format!("/{i}")).is_some())
            .count();
        assert!(held > 0 && held <= 3, "{held}");
        assert!(l1.get("/19").is_some(), "most recent kept");
    }

    #[test]
    fn eligibility() {
        assert!(eligible("GET", &[("Accept".into(), b"*/*".to_vec())]));
        assert!(!eligible("POST", &[]));
        assert!(!eligible("GET", &[("Range".into(), b"bytes=0-1".to_vec())]));
        assert!(!eligible(
            "GET",
            &[("cache-control".into(), b"no-cache".to_vec())]
        ));
    }
}

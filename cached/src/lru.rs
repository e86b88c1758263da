//! The L2 cache: a byte-bounded LRU of complete objects. Entries are `Arc`s, so an object
//! evicted while a receiver still streams it stays alive until that receiver is done.

use common::cache_policy::{self as policy, RequestRules, Staleness, Storable, Use};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
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

/// A complete stored answer.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    /// End-to-end headers, without framing (`Content-Length`/`Transfer-Encoding`).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Shared, so a refresh after a 304 keeps the bytes without copying them.
    pub body: Arc<Vec<u8>>,
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

    /// Current age (RFC 9111 §4.2.3: corrected initial age plus resident time).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age.saturating_add(
            now.duration_since(self.response_time)
                .unwrap_or(Duration::ZERO),
        )
    }
}

impl Stored {
    fn cost(&self, key: &str) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum();
        (self.body.len() + headers + key.len() + 128) as u64
    }
}

pub struct Lru {
    capacity: u64,
    used: u64,
    tick: u64,
    map: HashMap<String, (Arc<Stored>, u64)>,
    order: BTreeMap<u64, String>,
}

impl Lru {
    pub fn new(capacity: u64) -> Lru {
        Lru {
            capacity,
            used: 0,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Looks `key` up and marks it most recently used.
    pub fn get(&mut self, key: &str) -> Option<Arc<Stored>> {
        self.tick += 1;
        let tick = self.tick;
        let (obj, t) = self.map.get_mut(key)?;
        let old = std::mem::replace(t, tick);
        let obj = obj.clone();
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        Some(obj)
    }

    /// Stores `obj` under `key`, evicting the least recently used entries to make room.
    /// Returns how many were evicted, or `None` if the object can never fit.
    pub fn insert(&mut self, key: String, obj: Arc<Stored>) -> Option<u64> {
        let cost = obj.cost(&key);
        if cost > self.capacity {
            return None;
        }
        self.remove(&key);
        let mut evicted = 0;
        while self.used + cost > self.capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((o, _)) = self.map.remove(&victim) {
                self.used -= o.cost(&victim);
                evicted += 1;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.map.insert(key, (obj, self.tick));
        self.used += cost;
        Some(evicted)
    }

    pub fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some((o, t)) => {
                self.order.remove(&t);
                self.used -= o.cost(key);
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(n: usize) -> Arc<Stored> {
        Arc::new(Stored {
            status: 200,
            headers: vec![],
            body: Arc::new(vec![0; n]),
            validity: Validity::Http {
                lifetime: Duration::ZERO,
                must_revalidate: false,
                no_cache: false,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
        })
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut l = Lru::new(3 * 1200);
        for k in ["a", "b", "c"] {
            assert_eq!(l.insert(k.into(), obj(1000)), Some(0));
        }
        assert!(l.get("a").is_some()); // a is now the most recent
        assert_eq!(l.insert("d".into(), obj(1000)), Some(1));
        assert!(l.get("b").is_none(), "b was the least recently used");
        assert!(l.get("a").is_some() && l.get("c").is_some() && l.get("d").is_some());
        assert!(l.used() <= 3 * 1200);
        assert_eq!(l.insert("huge".into(), obj(10_000)), None);
        assert!(l.remove("a"));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn an_evicted_object_survives_under_its_reader() {
        let mut l = Lru::new(1500);
        l.insert("a".into(), obj(1000));
        let held = l.get("a").unwrap();
        l.insert("b".into(), obj(1000));
        assert!(l.get("a").is_none());
        assert_eq!(held.body.len(), 1000);
    }
}

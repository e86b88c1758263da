//! The L2 cache as HTTP sees it: the LRU plus `Vary` bookkeeping (several variants of one
//! URL side by side, all dropped together by PURGE or invalidation) plus the table of fills
//! in progress that collapses concurrent misses of one key into one upstream fetch.
//!
//! A fill streams: its leader appends body bytes as they come from the origin, and every
//! waiter copies them on to its own segment as they arrive, so all clients get bytes while
//! the origin is still sending. The waiting list is bounded in length (`max_waiters`) and
//! in time (a waiter gives up after the upstream read timeout without progress).

use crate::lru::{Lru, Stored};
use crate::policy::{self, Headers};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Cache {
    inner: Mutex<Inner>,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    max_waiters: usize,
}

struct Inner {
    lru: Lru,
    /// Primary key → the request headers its answers vary on (latest seen).
    vary: HashMap<String, Vec<String>>,
    /// Primary key → every full key stored under it.
    variants: HashMap<String, HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    pub fn new(capacity: u64, max_waiters: usize) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                lru: Lru::new(capacity),
                vary: HashMap::new(),
                variants: HashMap::new(),
            }),
            fills: Mutex::new(HashMap::new()),
            max_waiters,
        }
    }

    /// The full key (primary plus `Vary` secondary key) this request maps to now.
    pub fn full_key(&self, primary: &str, req: &[(String, Vec<u8>)]) -> String {
        let inner = lock(&self.inner);
        match inner.vary.get(primary) {
            Some(names) if !names.is_empty() => {
                format!("{primary}\n{}", policy::vary_key(names, req))
            }
            _ => primary.to_string(),
        }
    }

    pub fn get(&self, full_key: &str) -> Option<Arc<Stored>> {
        lock(&self.inner).lru.get(full_key)
    }

    /// Stores an answer; its `Vary` decides the secondary key. Returns evictions.
    pub fn insert(&self, primary: &str, req: &[(String, Vec<u8>)], obj: Arc<Stored>) -> u64 {
        let names: Vec<String> = policy::all_tokens(&obj.headers, "vary");
        let mut inner = lock(&self.inner);
        let key = if names.is_empty() {
            primary.to_string()
        } else {
            format!("{primary}\n{}", policy::vary_key(&names, req))
        };
        inner.vary.insert(primary.to_string(), names);
        inner
            .variants
            .entry(primary.to_string())
            .or_default()
            .insert(key.clone());
        let evicted = inner.lru.insert(key, obj).unwrap_or(0);
        // Forget bookkeeping for keys the LRU evicted (bounded clean-up of this primary only).
        let Inner { lru, variants, .. } = &mut *inner;
        if let Some(set) = variants.get_mut(primary) {
            set.retain(|k| lru.contains(k));
        }
        evicted
    }

    /// Drops every variant stored under `primary`; `true` if anything was there.
    pub fn remove_all(&self, primary: &str) -> bool {
        let mut inner = lock(&self.inner);
        let keys = inner.variants.remove(primary).unwrap_or_default();
        inner.vary.remove(primary);
        let mut any = false;
        for k in keys {
            any |= inner.lru.remove(&k);
        }
        any | inner.lru.remove(primary)
    }

    /// (objects, bytes) stored.
    pub fn usage(&self) -> (u64, u64) {
        let inner = lock(&self.inner);
        (inner.lru.len() as u64, inner.lru.used())
    }

    /// Joins the fill in progress for `key`, or becomes its leader.
    pub fn join_fill(&self, key: &str) -> FillRole<'_> {
        let mut fills = lock(&self.fills);
        if let Some(f) = fills.get(key) {
            let mut st = lock(&f.state);
            if !st.pass && st.waiters < self.max_waiters {
                st.waiters += 1;
                drop(st);
                return FillRole::Waiter(f.clone());
            }
            return FillRole::Alone;
        }
        let f = Arc::new(Fill {
            state: Mutex::new(FillState::default()),
            cv: Condvar::new(),
        });
        fills.insert(key.to_string(), f.clone());
        FillRole::Leader(FillLead {
            cache: self,
            key: key.to_string(),
            fill: f,
            ended: false,
        })
    }
}

pub enum FillRole<'a> {
    /// Fetch, and share what arrives.
    Leader(FillLead<'a>),
    /// Follow the leader's fill.
    Waiter(Arc<Fill>),
    /// The waiting list is full (or the fill turned out uncacheable): fetch alone.
    Alone,
}

#[derive(Default)]
pub struct FillState {
    pub head: Option<(u16, Headers, common::protocol::BodyLen)>,
    pub body: Vec<u8>,
    pub done: bool,
    pub failed: bool,
    /// The answer may not be shared: waiters fetch on their own.
    pub pass: bool,
    pub waiters: usize,
}

pub struct Fill {
    state: Mutex<FillState>,
    cv: Condvar,
}

/// What a waiter sees next.
pub enum Progress {
    /// The head is known.
    Head(u16, Headers, common::protocol::BodyLen),
    /// More body bytes (a copy), starting at the offset the waiter asked for.
    Bytes(Vec<u8>),
    /// The body is complete.
    Done,
    /// The leader failed: abort.
    Failed,
    /// Not shareable: fetch alone.
    Pass,
}

impl Fill {
    /// Waits (bounded by `timeout` without progress) for the head, or body bytes past
    /// `offset`, or the end. `want_head` asks for the head first.
    pub fn next(&self, want_head: bool, offset: usize, max: usize, timeout: Duration) -> Progress {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if st.failed {
                return Progress::Failed;
            }
            if st.pass {
                return Progress::Pass;
            }
            if want_head {
                if let Some((s, h, b)) = &st.head {
                    return Progress::Head(*s, h.clone(), *b);
                }
            } else if st.body.len() > offset {
                let end = st.body.len().min(offset + max);
                return Progress::Bytes(st.body[offset..end].to_vec());
            } else if st.done {
                return Progress::Done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Progress::Failed;
            }
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The leader's handle; dropping it without `finish` marks the fill failed.
pub struct FillLead<'a> {
    cache: &'a Cache,
    key: String,
    fill: Arc<Fill>,
    ended: bool,
}

impl FillLead<'_> {
    fn update(&self, f: impl FnOnce(&mut FillState)) {
        f(&mut lock(&self.fill.state));
        self.fill.cv.notify_all();
    }

    fn unregister(&self) {
        let mut fills = lock(&self.cache.fills);
        if fills
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            fills.remove(&self.key);
        }
    }

    /// The answer may be shared: waiters get its head now.
    pub fn head(&self, status: u16, headers: Headers, body: common::protocol::BodyLen) {
        self.update(|st| st.head = Some((status, headers, body)));
    }

    /// The answer may not be shared: waiters fetch alone, newcomers do not join.
    pub fn pass(&mut self) {
        self.unregister();
        self.update(|st| st.pass = true);
        self.ended = true;
    }

    pub fn bytes(&self, data: &[u8]) {
        self.update(|st| st.body.extend_from_slice(data));
    }

    /// The body is complete.
    pub fn finish(mut self) {
        self.unregister();
        self.update(|st| st.done = true);
        self.ended = true;
    }

    pub fn waiters(&self) -> usize {
        lock(&self.fill.state).waiters
    }
}

impl Drop for FillLead<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.unregister();
            self.update(|st| st.failed = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lru::Validity;
    use common::protocol::BodyLen;
    use std::time::SystemTime;

    fn obj(headers: &[(&str, &str)], body: &[u8]) -> Arc<Stored> {
        Arc::new(Stored {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Arc::new(body.to_vec()),
            validity: Validity::Http {
                lifetime: Duration::from_secs(60),
                must_revalidate: false,
                no_cache: false,
            },
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
        })
    }

    fn req(v: &[(&str, &str)]) -> Headers {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn variants_live_side_by_side_and_purge_drops_them_all() {
        let c = Cache::new(1 << 20, 10);
        let en = req(&[("accept-language", "en")]);
        let fr = req(&[("accept-language", "fr")]);
        c.insert("/a", &en, obj(&[("vary", "Accept-Language")], b"hello"));
        c.insert("/a", &fr, obj(&[("vary", "Accept-Language")], b"bonjour"));
        assert_eq!(
            c.get(&c.full_key("/a", &en)).unwrap().body.as_slice(),
            b"hello"
        );
        assert_eq!(
            c.get(&c.full_key("/a", &fr)).unwrap().body.as_slice(),
            b"bonjour"
        );
        assert!(c
            .get(&c.full_key("/a", &req(&[("accept-language", "de")])))
            .is_none());
        assert!(c.remove_all("/a"));
        assert!(c.get(&c.full_key("/a", &en)).is_none());
        assert!(!c.remove_all("/a"));
    }

    #[test]
    fn waiters_follow_the_leader_as_bytes_arrive() {
        let c = Cache::new(1 << 20, 10);
        let FillRole::Leader(lead) = c.join_fill("k") else {
            panic!("first is the leader")
        };
        let FillRole::Waiter(w) = c.join_fill("k") else {
            panic!("second waits")
        };
        lead.head(200, vec![], BodyLen::Unknown);
        assert!(matches!(
            w.next(true, 0, 10, Duration::from_secs(1)),
            Progress::Head(200, _, _)
        ));
        lead.bytes(b"abc");
        assert!(
            matches!(w.next(false, 0, 10, Duration::from_secs(1)), Progress::Bytes(b) if b == b"abc")
        );
        lead.bytes(b"def");
        assert!(
            matches!(w.next(false, 3, 10, Duration::from_secs(1)), Progress::Bytes(b) if b == b"def")
        );
        lead.finish();
        assert!(matches!(
            w.next(false, 6, 10, Duration::from_secs(1)),
            Progress::Done
        ));
        assert!(
            matches!(c.join_fill("k"), FillRole::Leader(_)),
            "a finished fill is gone"
        );
    }

    #[test]
    fn a_failed_leader_aborts_its_waiters_and_the_list_is_bounded() {
        let c = Cache::new(1 << 20, 1);
        let FillRole::Leader(lead) = c.join_fill("k") else {
            panic!()
        };
        let FillRole::Waiter(w) = c.join_fill("k") else {
            panic!()
        };
        assert!(
            matches!(c.join_fill("k"), FillRole::Alone),
            "waiting list full"
        );
        drop(lead);
        assert!(matches!(
            w.next(true, 0, 10, Duration::from_secs(1)),
            Progress::Failed
        ));
    }
}

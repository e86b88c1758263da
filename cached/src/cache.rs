//! The L2 cache as HTTP sees it: a byte-bounded LRU (`common::lru`) of stored answers (a
//! body published in the arena is not held here: the entry keeps its head and a reference,
//! charged only for the head, and `sweep` drops heads whose record the arena let go), plus
//! `Vary` bookkeeping (several variants of one URL side by side, each with up to
//! [`MAX_PIECES`] stored `206` pieces, all dropped together by PURGE or invalidation), plus
//! the table of fills in progress that collapses concurrent
//! misses of one key into one upstream fetch.
//!
//! A fill streams: its leader appends body bytes as they come from the origin, and every
//! waiter copies them on to its own segment as they arrive, so all clients get bytes while
//! the origin is still sending. The waiting list is bounded in length (`max_waiters`) and
//! in time (a waiter gives up after the upstream read timeout without progress). A fill
//! whose record is exposed in the shared arena while it arrives names it
//! ([`FillLead::streams_in_arena`]): its waiters then send their worker there instead of
//! copying bytes, and free their segment at once.

use crate::stored::{ArenaBody, Body, Stored};
use common::cache_policy as policy;
use common::http::Headers;
use common::lru::Lru;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Cache {
    inner: Mutex<Inner>,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    max_waiters: usize,
}

struct Inner {
    lru: Lru<Arc<Stored>>,
    /// Primary key → the request headers its answers vary on (latest seen; none: no entry).
    vary: HashMap<String, Vec<String>>,
    /// Primary key → every full key stored under it other than the primary key itself
    /// (`Vary` variants and `206` pieces; none: no entry).
    variants: HashMap<String, HashSet<String>>,
    /// Body bytes the entries hold themselves (`Body::Owned`).
    owned: u64,
}

impl Inner {
    /// Stores `obj` under `key` at its cost, keeping `owned` and the bookkeeping of the
    /// entries it evicts in step; returns evictions.
    fn put(&mut self, key: String, obj: Arc<Stored>) -> u64 {
        let cost = obj.cost(&key);
        let add = obj.body.owned_len();
        let mut gone = 0;
        let mut evicted_keys = Vec::new();
        let evicted = self.lru.insert_with(key.clone(), obj, cost, |k, o| {
            gone += o.body.owned_len();
            if k != key {
                evicted_keys.push(k.to_string());
            }
        });
        self.owned -= gone;
        if evicted.is_some() {
            self.owned += add;
        }
        for k in evicted_keys {
            self.forget(&k);
        }
        evicted.unwrap_or(0)
    }

    fn take(&mut self, key: &str) -> Option<Arc<Stored>> {
        let o = self.lru.remove(key)?;
        self.owned -= o.body.owned_len();
        self.forget(key);
        Some(o)
    }

    /// Drops `key` from the bookkeeping of its primary key, and the primary's entries once
    /// nothing is stored under it (so bookkeeping never outlives what it describes).
    fn forget(&mut self, key: &str) {
        let primary = primary_of(key);
        if let Some(set) = self.variants.get_mut(primary) {
            set.remove(key);
            if set.is_empty() {
                self.variants.remove(primary);
            }
        }
        if !self.variants.contains_key(primary) && !self.lru.contains(primary) {
            self.vary.remove(primary);
        }
    }
}

/// Most pieces (`206`, RFC 9111 §3.4) kept for one variant: past this, the smallest goes.
pub const MAX_PIECES: usize = 8;

/// What the keys of the stored pieces of the variant stored at `full_key` begin with; each
/// piece's key ends with its first byte (pieces never overlap: touching ones are combined).
fn piece_prefix(full_key: &str) -> String {
    format!("{full_key}\npartial\n")
}

/// The primary key a full key (primary, or primary and `Vary` secondary key) belongs to.
fn primary_of(full_key: &str) -> &str {
    full_key.split('\n').next().unwrap_or(full_key)
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
                owned: 0,
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
        lock(&self.inner).lru.get(full_key).cloned()
    }

    /// Stores an answer; its `Vary` decides the secondary key. Returns the evictions and the
    /// key it was stored under.
    pub fn insert(
        &self,
        primary: &str,
        req: &[(String, Vec<u8>)],
        obj: Arc<Stored>,
    ) -> (u64, String) {
        let fields = obj.headers.to_vec();
        let names: Vec<String> = policy::all_tokens(&fields, "vary");
        let mut inner = lock(&self.inner);
        let mut key = if names.is_empty() {
            primary.to_string()
        } else {
            format!("{primary}\n{}", policy::vary_key(&names, req))
        };
        if obj.status == 206 {
            // A piece of the variant lives beside it (see `piece_prefix`).
            let first = policy::content_range(&fields).map_or(0, |(f, _, _)| f);
            key = format!("{}{first}", piece_prefix(&key));
        }
        // Most answers have neither `Vary` nor pieces: they keep no bookkeeping beside their
        // entry (its key is the primary key, which `remove_all` takes anyway).
        if names.is_empty() {
            inner.vary.remove(primary);
        } else {
            inner.vary.insert(primary.to_string(), names);
        }
        if key != primary {
            inner
                .variants
                .entry(primary.to_string())
                .or_default()
                .insert(key.clone());
        }
        let evicted = inner.put(key.clone(), obj);
        if !inner.lru.contains(&key) {
            // Refused (larger than the whole capacity): nothing to keep books of.
            inner.forget(&key);
        }
        (evicted, key)
    }

    /// The arena now holds the body of `obj`, stored under `key`: the entry keeps only its
    /// head and `body` (unless another answer replaced it meanwhile). `true` if switched.
    pub fn to_arena(&self, key: &str, obj: &Arc<Stored>, body: ArenaBody) -> bool {
        let mut inner = lock(&self.inner);
        if !inner.lru.get(key).is_some_and(|o| Arc::ptr_eq(o, obj)) {
            return false;
        }
        inner.put(key.to_string(), Arc::new(obj.with_body(Body::Arena(body))));
        true
    }

    /// Drops the entry at `key` if it is still `obj` (an arena body found gone).
    pub fn remove_if(&self, key: &str, obj: &Arc<Stored>) -> bool {
        let mut inner = lock(&self.inner);
        if !inner.lru.get(key).is_some_and(|o| Arc::ptr_eq(o, obj)) {
            return false;
        }
        inner.take(key);
        true
    }

    /// Looks at up to `n` of the least recently used entries whose body is in the arena and
    /// drops those `held` says the arena let go, so heads of evicted records (which weigh
    /// little here) do not pile up. The ones still held become the most recent, so the next
    /// sweep looks at others: a few per store keep pace with the arena's evictions. `held`
    /// runs without the cache's lock. Returns how many it dropped.
    pub fn sweep(&self, n: usize, held: impl FnOnce(&[&ArenaBody]) -> Vec<bool>) -> u64 {
        let looked: Vec<(String, Arc<Stored>)> = lock(&self.inner)
            .lru
            .oldest(4 * n)
            .filter(|(_, o)| matches!(o.body, Body::Arena(_)))
            .take(n)
            .map(|(k, o)| (k.to_string(), Arc::clone(o)))
            .collect();
        if looked.is_empty() {
            return 0;
        }
        let bodies: Vec<&ArenaBody> = looked
            .iter()
            .filter_map(|(_, o)| match &o.body {
                Body::Arena(a) => Some(a),
                Body::Owned(_) | Body::Pinned(..) => None,
            })
            .collect();
        let kept = held(&bodies);
        let mut inner = lock(&self.inner);
        let mut dropped = 0;
        for ((k, o), kept) in looked.iter().zip(kept) {
            if !inner.lru.get(k).is_some_and(|now| Arc::ptr_eq(now, o)) {
                continue;
            }
            if !kept {
                inner.take(k);
                dropped += 1;
            }
        }
        dropped
    }

    /// The stored pieces of the variant at `full_key`, with their keys.
    pub fn pieces(&self, full_key: &str) -> Vec<(String, Arc<Stored>)> {
        let prefix = piece_prefix(full_key);
        let mut inner = lock(&self.inner);
        let keys: Vec<String> = inner
            .variants
            .get(primary_of(full_key))
            .map(|set| {
                set.iter()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        keys.into_iter()
            .filter_map(|k| inner.lru.get(&k).cloned().map(|o| (k, o)))
            .collect()
    }

    /// Drops one stored piece (by the key [`Cache::pieces`] gave).
    pub fn remove_piece(&self, key: &str) {
        lock(&self.inner).take(key);
    }

    /// Drops every variant stored under `primary`, pieces included; `true` if anything was there.
    pub fn remove_all(&self, primary: &str) -> bool {
        let mut inner = lock(&self.inner);
        let keys = inner.variants.remove(primary).unwrap_or_default();
        inner.vary.remove(primary);
        let mut any = false;
        for k in keys {
            any |= inner.take(&k).is_some();
        }
        any | inner.take(primary).is_some()
    }

    /// (objects, bytes charged, body bytes held here) stored.
    pub fn usage(&self) -> (u64, u64, u64) {
        let inner = lock(&self.inner);
        (inner.lru.len() as u64, inner.lru.used(), inner.owned)
    }

    /// Joins the fill in progress for `key`, or becomes its leader. `req` is the request's
    /// header list: a leader's is kept so a follower can check, once the answer's `Vary` is
    /// known, that both select the same variant.
    pub fn join_fill(&self, key: &str, req: &[(String, Vec<u8>)]) -> FillRole<'_> {
        let mut fills = lock(&self.fills);
        if let Some(f) = fills.get(key) {
            let mut st = lock(&f.state);
            if !st.pass && !st.unstored && st.waiters < self.max_waiters {
                st.waiters += 1;
                let id = st.next_id;
                st.next_id += 1;
                st.positions.insert(id, 0);
                drop(st);
                return FillRole::Waiter(Follower {
                    fill: f.clone(),
                    id,
                });
            }
            return FillRole::Alone;
        }
        let f = Arc::new(Fill {
            state: Mutex::new(FillState::default()),
            cv: Condvar::new(),
            paced: Condvar::new(),
            leader_req: req.to_vec(),
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
    Waiter(Follower),
    /// The waiting list is full (or the fill turned out uncacheable): fetch alone.
    Alone,
}

/// Least window of body bytes an unstored fill keeps for its followers.
const MIN_WINDOW: usize = 256 << 10;

#[derive(Default)]
pub struct FillState {
    pub head: Option<(u16, Headers, common::protocol::BodyLen)>,
    /// Body bytes from offset `base` on. While the answer may still be stored this is all
    /// of it (at most `max_object_size`); once it is too large (`unstored`) only a window
    /// that the followers still need is kept.
    pub body: Vec<u8>,
    pub base: u64,
    pub done: bool,
    pub failed: bool,
    /// The answer may not be shared: waiters fetch on their own.
    pub pass: bool,
    /// The answer outgrew `max_object_size`: it streams through unstored, newcomers do not
    /// join, and bytes every follower has copied are released.
    pub unstored: bool,
    /// Followers still following.
    pub waiters: usize,
    /// The arena record the fill is written into as it arrives (workers stream it there).
    pub arena: Option<common::protocol::FollowArena>,
    /// Follower id → the next body offset it asked for.
    positions: HashMap<u64, u64>,
    next_id: u64,
}

impl FillState {
    fn end(&self) -> u64 {
        self.base + self.body.len() as u64
    }

    /// Releases the bytes of an unstored fill that no follower needs any more, and, past
    /// `window`, those of followers that fell too far behind (they fail).
    fn trim(&mut self, window: usize) {
        if !self.unstored {
            return;
        }
        let end = self.end();
        let mut keep_from = self.positions.values().copied().min().unwrap_or(end);
        if self.body.len() > window {
            // Cut back to half the window, so the move is paid once per half window.
            keep_from = keep_from.max(end - (window / 2) as u64);
        }
        let drop = keep_from.saturating_sub(self.base) as usize;
        if drop > 0 && (drop >= self.body.len() / 2 || self.body.len() > window) {
            self.body.drain(..drop);
            self.base += drop as u64;
            if self.body.capacity() > 2 * window {
                self.body.shrink_to(window);
            }
        }
    }
}

pub struct Fill {
    state: Mutex<FillState>,
    /// Wakes followers (new bytes, the head, the end).
    cv: Condvar,
    /// Wakes a leader that waits for its followers (a follower moved on or left).
    paced: Condvar,
    /// The leader's request headers (for the followers' `Vary` check).
    leader_req: Headers,
}

/// What a waiter sees next.
pub enum Progress {
    /// The head is known.
    Head(u16, Headers, common::protocol::BodyLen),
    /// More body bytes (a copy), starting at the offset the waiter asked for.
    Bytes(Vec<u8>),
    /// The body is complete.
    Done,
    /// The leader failed after the head, or this follower fell out of an unstored fill's
    /// window, or nothing came in time: abort.
    Failed,
    /// Not shareable, or the leader failed before its head: fetch alone.
    Pass,
}

/// A follower's place in a fill; dropping it leaves the fill (the leader stops reading
/// from the origin once its own client and every follower are gone).
pub struct Follower {
    fill: Arc<Fill>,
    id: u64,
}

impl Follower {
    /// The request headers of the fill's leader.
    pub fn leader_req(&self) -> &Headers {
        &self.fill.leader_req
    }

    /// The arena record the fill is streamed into, if it is (known with the head).
    pub fn arena(&self) -> Option<common::protocol::FollowArena> {
        lock(&self.fill.state).arena.clone()
    }

    /// Waits (bounded by `timeout` without progress) for the head, or body bytes past
    /// `offset`, or the end. `want_head` asks for the head first.
    pub fn next(&self, want_head: bool, offset: u64, max: usize, timeout: Duration) -> Progress {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.fill.state);
        if st.positions.insert(self.id, offset) != Some(offset) {
            self.fill.paced.notify_all();
        }
        loop {
            if st.failed {
                // Before the head nothing was shared with this follower: it fetches alone
                // (as nginx's cache-lock waiters do) instead of failing with the leader.
                return if want_head {
                    Progress::Pass
                } else {
                    Progress::Failed
                };
            }
            if st.pass {
                return Progress::Pass;
            }
            if want_head {
                if let Some((s, h, b)) = &st.head {
                    return Progress::Head(*s, h.clone(), *b);
                }
            } else if offset < st.base {
                return Progress::Failed;
            } else if st.end() > offset {
                let from = (offset - st.base) as usize;
                let end = st.body.len().min(from + max);
                return Progress::Bytes(st.body[from..end].to_vec());
            } else if st.done {
                return Progress::Done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Progress::Failed;
            }
            st = self
                .fill
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut st = lock(&self.fill.state);
        st.positions.remove(&self.id);
        st.waiters = st.waiters.saturating_sub(1);
        drop(st);
        self.fill.paced.notify_all();
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

    /// The fill is written into the arena record `follow` as it arrives (called before
    /// [`FillLead::head`]): waiters send their workers there.
    pub fn streams_in_arena(&self, follow: common::protocol::FollowArena) {
        self.update(|st| st.arena = Some(follow));
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

    /// Appends body bytes; an unstored fill keeps at most about `window` of them.
    pub fn bytes(&self, data: &[u8], window: usize) {
        let window = window.max(MIN_WINDOW);
        self.update(|st| {
            st.body.extend_from_slice(data);
            st.trim(window);
        });
    }

    /// The answer outgrew what may be stored: it streams on to the followers through a
    /// bounded window, newcomers fetch on their own.
    pub fn unstored(&self, window: usize) {
        self.unregister();
        let window = window.max(MIN_WINDOW);
        self.update(|st| {
            st.unstored = true;
            st.trim(window);
        });
    }

    /// For a leader whose own client is gone: waits (at most `timeout`) until the fastest
    /// follower is within half a window of the end, so the followers set the pace instead
    /// of falling out of the window. Returns the followers left.
    pub fn pace(&self, window: usize, timeout: Duration) -> usize {
        let window = window.max(MIN_WINDOW) as u64;
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.fill.state);
        loop {
            let front = st.positions.values().copied().max().unwrap_or(0);
            let left = deadline.saturating_duration_since(Instant::now());
            if st.waiters == 0 || !st.unstored || st.end() - front.min(st.end()) <= window / 2 {
                return st.waiters;
            }
            if left.is_zero() {
                return st.waiters;
            }
            st = self
                .fill
                .paced
                .wait_timeout(st, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The body is complete.
    pub fn finish(mut self) {
        self.unregister();
        self.update(|st| st.done = true);
        self.ended = true;
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
    use common::protocol::BodyLen;

    fn obj(headers: &[(&str, &str)], body: &[u8]) -> Arc<Stored> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        Arc::new(crate::stored::fresh_for_test(headers, body))
    }

    fn req(v: &[(&str, &str)]) -> Headers {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// (primaries with `Vary` names, primaries with variants or pieces listed, keys listed).
    fn bookkeeping(c: &Cache) -> (usize, usize, usize) {
        let inner = lock(&c.inner);
        let listed = inner.variants.values().map(HashSet::len).sum();
        (inner.vary.len(), inner.variants.len(), listed)
    }

    #[test]
    fn bookkeeping_is_kept_only_for_variants_and_pieces_and_never_outlives_them() {
        // Room for a few small entries at a time.
        let c = Cache::new(700, 10);
        let none = req(&[]);
        // Plain answers (most of a cache) keep nothing beside their entry.
        for i in 0..50 {
            c.insert(&format!("/plain/{i}"), &none, obj(&[], b"x"));
        }
        assert_eq!(bookkeeping(&c), (0, 0, 0));
        // Varied answers are listed while stored, and forgotten once evicted.
        for i in 0..50 {
            let r = req(&[("accept-encoding", "gzip")]);
            c.insert(
                &format!("/v/{i}"),
                &r,
                obj(&[("vary", "Accept-Encoding")], b"x"),
            );
        }
        let stored = c.usage().0 as usize;
        let (vary, primaries, listed) = bookkeeping(&c);
        assert!((1..10).contains(&stored), "{stored}");
        assert_eq!((vary, primaries, listed), (stored, stored, stored));
        // A piece is listed under its primary; dropping it forgets the primary.
        let piece = obj(&[("content-range", "bytes 0-0/10")], b"x");
        let piece = Arc::new(Stored {
            status: 206,
            ..Arc::try_unwrap(piece).unwrap()
        });
        let (_, k) = c.insert("/p", &none, piece);
        assert_eq!(c.pieces("/p").len(), 1);
        c.remove_piece(&k);
        assert!(c.pieces("/p").is_empty());
        assert!(!lock(&c.inner).variants.contains_key("/p"));
        // PURGE of everything leaves no bookkeeping.
        for i in 0..50 {
            c.remove_all(&format!("/v/{i}"));
        }
        assert_eq!(bookkeeping(&c), (0, 0, 0));
    }

    #[test]
    fn variants_live_side_by_side_and_purge_drops_them_all() {
        let c = Cache::new(1 << 20, 10);
        let en = req(&[("accept-language", "en")]);
        let fr = req(&[("accept-language", "fr")]);
        c.insert("/a", &en, obj(&[("vary", "Accept-Language")], b"hello"));
        c.insert("/a", &fr, obj(&[("vary", "Accept-Language")], b"bonjour"));
        assert_eq!(
            c.get(&c.full_key("/a", &en)).unwrap().body.bytes().unwrap(),
            b"hello"
        );
        assert_eq!(
            c.get(&c.full_key("/a", &fr)).unwrap().body.bytes().unwrap(),
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
    fn an_evicted_answer_lives_on_under_its_reader() {
        let c = Cache::new(1500, 10);
        c.insert("a", &[], obj(&[], &[0; 1000]));
        let held = c.get("a").unwrap();
        assert_eq!(c.insert("b", &[], obj(&[], &[0; 1000])).0, 1);
        assert!(c.get("a").is_none());
        assert_eq!(held.body.len(), 1000);
        assert_eq!(c.usage().0, 1);
    }

    #[test]
    fn waiters_follow_the_leader_as_bytes_arrive() {
        let c = Cache::new(1 << 20, 10);
        let FillRole::Leader(lead) = c.join_fill("k", &[]) else {
            panic!("first is the leader")
        };
        let FillRole::Waiter(w) = c.join_fill("k", &[]) else {
            panic!("second waits")
        };
        lead.head(200, vec![], BodyLen::Unknown);
        assert!(matches!(
            w.next(true, 0, 10, Duration::from_secs(1)),
            Progress::Head(200, _, _)
        ));
        lead.bytes(b"abc", 0);
        assert!(
            matches!(w.next(false, 0, 10, Duration::from_secs(1)), Progress::Bytes(b) if b == b"abc")
        );
        lead.bytes(b"def", 0);
        assert!(
            matches!(w.next(false, 3, 10, Duration::from_secs(1)), Progress::Bytes(b) if b == b"def")
        );
        lead.finish();
        assert!(matches!(
            w.next(false, 6, 10, Duration::from_secs(1)),
            Progress::Done
        ));
        assert!(
            matches!(c.join_fill("k", &[]), FillRole::Leader(_)),
            "a finished fill is gone"
        );
    }

    #[test]
    fn a_failed_leader_sends_its_waiters_alone_and_the_list_is_bounded() {
        let c = Cache::new(1 << 20, 1);
        let FillRole::Leader(lead) = c.join_fill("k", &[]) else {
            panic!()
        };
        let FillRole::Waiter(w) = c.join_fill("k", &[]) else {
            panic!()
        };
        assert!(
            matches!(c.join_fill("k", &[]), FillRole::Alone),
            "waiting list full"
        );
        drop(lead);
        // Nothing was shared before the failure: the waiter fetches alone.
        assert!(matches!(
            w.next(true, 0, 10, Duration::from_secs(1)),
            Progress::Pass
        ));
        assert!(matches!(
            w.next(false, 0, 10, Duration::from_secs(1)),
            Progress::Failed
        ));
    }

    #[test]
    fn an_unstored_fill_keeps_a_bounded_window_and_counts_followers_out() {
        let c = Cache::new(1 << 20, 10);
        let FillRole::Leader(lead) = c.join_fill("k", &[]) else {
            panic!()
        };
        let FillRole::Waiter(fast) = c.join_fill("k", &[]) else {
            panic!()
        };
        let FillRole::Waiter(slow) = c.join_fill("k", &[]) else {
            panic!()
        };
        let t = Duration::from_millis(10);
        lead.head(200, vec![], BodyLen::Unknown);
        lead.unstored(0);
        assert!(
            matches!(c.join_fill("k", &[]), FillRole::Leader(_)),
            "an unstored fill takes no newcomers"
        );
        let piece = vec![7u8; 64 << 10];
        let mut at = 0u64;
        for _ in 0..64 {
            lead.bytes(&piece, 0);
            // The fast follower keeps up.
            while let Progress::Bytes(b) = fast.next(false, at, 1 << 20, t) {
                at += b.len() as u64;
            }
            let st = lock(&lead.fill.state);
            assert!(
                st.body.len() <= MIN_WINDOW + piece.len(),
                "{}",
                st.body.len()
            );
        }
        assert_eq!(at, (64 * 64) << 10);
        assert!(
            matches!(slow.next(false, 0, 1 << 20, t), Progress::Failed),
            "fell out of the window"
        );
        assert_eq!(lead.pace(0, t), 2);
        drop(slow);
        drop(fast);
        assert_eq!(lead.pace(0, t), 0, "both followers counted out");
    }
}

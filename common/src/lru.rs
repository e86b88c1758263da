//! A cost-bounded least-recently-used map: string keys, values of any type, each entry
//! charged the byte cost its owner gives at insert. Inserting evicts the least recently used
//! entries until the total fits the capacity; a lookup makes an entry the most recent.
//!
//! It does no locking and knows nothing of HTTP: `cached`'s cache and a proxy worker's L1
//! each wrap one in their own mutex and decide what an entry costs and when it is stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub struct Lru<V> {
    capacity: u64,
    used: u64,
    /// Use counter: each lookup or insert takes the next tick, so `order` sorts by recency.
    tick: u64,
    /// Each key is allocated once, shared by `map` and `order`.
    map: HashMap<Arc<str>, Slot<V>>,
    /// Tick of last use → key, least recent first.
    order: BTreeMap<u64, Arc<str>>,
}

struct Slot<V> {
    value: V,
    cost: u64,
    tick: u64,
}

impl<V> Lru<V> {
    /// An empty map holding entries of at most `capacity` bytes in all.
    pub fn new(capacity: u64) -> Lru<V> {
        Lru {
            capacity,
            used: 0,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Looks `key` up and marks it most recently used.
    pub fn get(&mut self, key: &str) -> Option<&V> {
        let slot = self.map.get_mut(key)?;
        self.tick += 1;
        let old = std::mem::replace(&mut slot.tick, self.tick);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(self.tick, k);
        }
        Some(&slot.value)
    }

    /// Stores `value` under `key` at `cost` bytes, replacing an entry of the same key and
    /// evicting the least recently used others to make room. Returns how many were evicted,
    /// or `None` (and changes nothing) when `cost` exceeds the whole capacity.
    pub fn insert(&mut self, key: String, value: V, cost: u64) -> Option<u64> {
        self.insert_with(key, value, cost, |_, _| {})
    }

    /// [`Lru::insert`], handing every value it drops (the replaced one and the evicted ones)
    /// to `dropped` with its key, so the owner can keep its own accounts of them.
    pub fn insert_with(
        &mut self,
        key: String,
        value: V,
        cost: u64,
        mut dropped: impl FnMut(&str, V),
    ) -> Option<u64> {
        if cost > self.capacity {
            return None;
        }
        if let Some(old) = self.remove(&key) {
            dropped(&key, old);
        }
        let mut evicted = 0;
        while self.used + cost > self.capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.map.remove(&victim) {
                self.used -= slot.cost;
                evicted += 1;
                dropped(&victim, slot.value);
            }
        }
        self.tick += 1;
        let key: Arc<str> = Arc::from(key);
        self.order.insert(self.tick, Arc::clone(&key));
        let tick = self.tick;
        self.map.insert(key, Slot { value, cost, tick });
        self.used += cost;
        Some(evicted)
    }

    /// Drops `key`'s entry, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let slot = self.map.remove(key)?;
        self.order.remove(&slot.tick);
        self.used -= slot.cost;
        Some(slot.value)
    }

    /// Up to `n` entries, least recently used first (their recency is left as it is).
    pub fn oldest(&self, n: usize) -> impl Iterator<Item = (&str, &V)> {
        self.order
            .values()
            .take(n)
            .filter_map(|k| self.map.get(k).map(|s| (&**k, &s.value)))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.used = 0;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged by the entries held (never more than the capacity).
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut l = Lru::new(3000);
        for k in ["a", "b", "c"] {
            assert_eq!(l.insert(k.into(), k.to_string(), 1000), Some(0));
        }
        assert_eq!(l.get("a").map(String::as_str), Some("a")); // a is now the most recent
        assert_eq!(l.insert("d".into(), "d".into(), 1000), Some(1));
        assert!(l.get("b").is_none(), "b was the least recently used");
        assert!(l.contains("a") && l.contains("c") && l.contains("d"));
        assert_eq!(l.used(), 3000);
        assert_eq!(l.insert("huge".into(), String::new(), 3001), None);
        assert_eq!(l.len(), 3, "an entry that can never fit changes nothing");
        assert_eq!(l.remove("a").as_deref(), Some("a"));
        assert_eq!((l.len(), l.used()), (2, 2000));
    }

    #[test]
    fn replacing_a_key_charges_its_new_cost_and_evicts_nothing_else() {
        let mut l = Lru::new(2000);
        l.insert("a".into(), 1, 1000);
        l.insert("b".into(), 2, 500);
        assert_eq!(l.insert("b".into(), 3, 1000), Some(0));
        assert_eq!((l.get("b").copied(), l.used(), l.len()), (Some(3), 2000, 2));
        l.clear();
        assert!(l.is_empty() && l.used() == 0 && l.get("a").is_none());
    }

    #[test]
    fn one_entry_as_large_as_the_capacity_evicts_all_others() {
        let mut l = Lru::new(1000);
        for i in 0..10 {
            l.insert(i.to_string(), i, 100);
        }
        assert_eq!(l.insert("big".into(), 99, 1000), Some(10));
        assert_eq!((l.len(), l.used()), (1, 1000));
    }

    #[test]
    fn insert_with_hands_over_what_it_drops_and_oldest_lists_by_recency() {
        let mut l = Lru::new(300);
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            l.insert(k.into(), v, 100);
        }
        l.get("a");
        let order: Vec<&str> = l.oldest(5).map(|(k, _)| k).collect();
        assert_eq!(order, ["b", "c", "a"]);
        let mut dropped = Vec::new();
        assert_eq!(
            l.insert_with("c".into(), 30, 100, |k, v| dropped.push((k.to_string(), v))),
            Some(0)
        );
        assert_eq!(
            l.insert_with("d".into(), 4, 200, |k, v| dropped.push((k.to_string(), v))),
            Some(2)
        );
        assert_eq!(
            dropped,
            [
                ("c".to_string(), 3),
                ("b".to_string(), 2),
                ("a".to_string(), 1)
            ],
            "the replaced value, then the evicted ones"
        );
    }
}

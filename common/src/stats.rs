//! Shared-memory statistics: one region per daemon (`/<instance>.stats.proxy`,
//! `/<instance>.stats.cached`), a slot of atomic counters per process (the proxy: master in
//! slot 0, worker N in slot N), summed on read. No locks on the request path: counters are
//! `fetch_add(Relaxed)`; gauges go up and down the same way.
//!
//! One list, [`stats_fields!`], generates the slot layout, the names and help texts used by
//! the JSON and Prometheus renderers and the README table.
//! The cached region's header also announces the live `cached` (owner pid + start time):
//! workers read it to know whether anyone will answer their doorbells.

use crate::shm::{ShmError, ShmRegion, ShmSafe};
use std::sync::atomic::{AtomicU64, Ordering};

pub const STATS_MAGIC: u32 = u32::from_le_bytes(*b"SHST");
pub const STATS_VERSION: u32 = 1;
const SLOTS_OFFSET: usize = 64;
/// Latency histogram buckets: bucket i counts requests that took < 2^i µs (last: the rest).
pub const LATENCY_BUCKETS: usize = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Counter,
    Gauge,
}

pub struct Field {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FieldKind,
}

macro_rules! stats_fields {
    ($( $kind:ident $name:ident : $help:literal ),* $(,)?) => {
        /// One slot of counters. Layout is generated: a change bumps `STATS_VERSION`.
        #[repr(C)]
        pub struct Counters {
            $( #[doc = $help] pub $name: AtomicU64, )*
            /// Request latency histogram (see `LATENCY_BUCKETS`).
            pub latency_us: [AtomicU64; LATENCY_BUCKETS],
        }

        /// Every field of [`Counters`], in layout order.
        pub const FIELDS: &[Field] = &[ $( Field { name: stringify!($name), help: $help, kind: FieldKind::$kind } ),* ];

        impl Counters {
            /// Current values in `FIELDS` order.
            pub fn values(&self) -> Vec<u64> {
                vec![ $( self.$name.load(Ordering::Relaxed) ),* ]
            }
        }
    };
}

stats_fields! {
    Counter requests: "Requests received from clients",
    Counter responses_1xx: "Responses with a 1xx status",
    Counter responses_2xx: "Responses with a 2xx status",
    Counter responses_3xx: "Responses with a 3xx status",
    Counter responses_4xx: "Responses with a 4xx status",
    Counter responses_5xx: "Responses with a 5xx status",
    Counter bytes_in: "Request bytes read from clients",
    Counter bytes_out: "Response bytes written to clients",
    Counter connections_accepted: "Client connections accepted by the master",
    Gauge connections_active: "Client connections open in a worker",
    Gauge fds_in_flight: "Connections passed by the master and not yet received by a worker",
    Counter bad_requests: "Requests rejected as malformed (4xx before any forwarding)",
    Counter timeouts_header: "Connections closed because the request head was not received in time (408)",
    Counter timeouts_idle: "Idle keep-alive connections closed",
    Counter timeouts_send: "Connections closed because the client did not read in time",
    Counter cached_unavailable: "Requests answered 503 because cached was not running",
    Counter cached_timeouts: "Transfers aborted because cached did not answer in time",
    Counter pool_acquires: "Segments leased from the pool",
    Counter pool_acquire_timeouts: "Segment leases that timed out (503)",
    Counter transfers_aborted: "Segment transfers aborted (client gone, peer died, timeout)",
    Counter worker_restarts: "Workers forked to replace one that died",
    Counter segments_reclaimed: "Segments reclaimed from dead processes",
    Counter messages_rejected: "Doorbells or segment heads that failed validation",
    Counter l2_hits: "Requests answered from the cached LRU",
    Counter l2_misses: "Cacheable requests not found in the LRU",
    Counter l2_stale: "Stale stored answers served (max-stale, or origin unreachable)",
    Counter l2_revalidated: "Stale stored answers revalidated with the origin (304)",
    Counter collapsed: "Requests that followed another request's fill instead of fetching",
    Counter l1_hits: "Requests answered from a worker's L1 without a segment round trip",
    Counter l1_misses: "L1 lookups that went on to cached",
    Counter l1_flushes: "Times a worker dropped its L1 after a purge or invalidation",
    Counter passes: "Requests passed to the source without caching",
    Counter evictions: "Objects evicted from the LRU",
    Gauge stored_objects: "Objects stored in the LRU",
    Gauge stored_bytes: "Bytes stored in the LRU",
    Counter disk_reads: "Files read from the document root",
    Counter upstream_requests: "Requests sent to the origin",
    Counter upstream_errors: "Origin requests that failed (refused, reset, bad answer)",
    Counter upstream_timeouts: "Origin requests that timed out",
    Counter upstream_latency_us: "Sum of origin response-head latencies in microseconds",
}

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for Counters {}

const SLOT_SIZE: usize = size_of::<Counters>().next_multiple_of(64);

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Gauges go down by wrapping subtraction; the sum over slots is what is read.
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn status(&self, status: u16) {
        let c = match status {
            100..=199 => &self.responses_1xx,
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        Self::inc(c);
    }

    pub fn latency(&self, us: u64) {
        let b = (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        Self::inc(&self.latency_us[b]);
    }
}

/// A stats region (owner: creates and unlinks; others: open to read).
pub struct StatsRegion {
    region: ShmRegion,
    slots: usize,
}

/// Summed values of every slot of a region.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub values: Vec<u64>,
    pub latency: Vec<u64>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> u64 {
        FIELDS
            .iter()
            .position(|f| f.name == name)
            .map_or(0, |i| self.values[i])
    }

    /// Approximate latency percentile in µs (upper bound of the bucket), `q` in 0..=1.
    pub fn latency_percentile(&self, q: f64) -> u64 {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= want {
                return 1u64 << i;
            }
        }
        1u64 << (LATENCY_BUCKETS - 1)
    }
}

impl StatsRegion {
    pub fn create(name: &str, slots: usize) -> Result<StatsRegion, ShmError> {
        let region = ShmRegion::create(
            name,
            SLOTS_OFFSET + slots * SLOT_SIZE,
            STATS_MAGIC,
            STATS_VERSION,
        )?;
        region.publish(STATS_MAGIC);
        Ok(StatsRegion { region, slots })
    }

    pub fn open(name: &str) -> Result<StatsRegion, ShmError> {
        let region = ShmRegion::open(name, STATS_MAGIC, STATS_VERSION)?;
        let slots = (region.len().saturating_sub(SLOTS_OFFSET)) / SLOT_SIZE;
        Ok(StatsRegion { region, slots })
    }

    pub fn slot(&self, i: usize) -> &Counters {
        assert!(i < self.slots, "stats slot {i} out of range");
        self.region.get(SLOTS_OFFSET + i * SLOT_SIZE)
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The process that created the region (for `cached`: the live cached, if alive).
    pub fn owner(&self) -> crate::process::ProcId {
        self.region.header().owner()
    }

    pub fn disown(&mut self) {
        self.region.disown();
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            values: vec![0; FIELDS.len()],
            latency: vec![0; LATENCY_BUCKETS],
        };
        for i in 0..self.slots {
            let c = self.slot(i);
            for (acc, v) in s.values.iter_mut().zip(c.values()) {
                *acc = acc.wrapping_add(v);
            }
            for (acc, b) in s.latency.iter_mut().zip(&c.latency_us) {
                *acc += b.load(Ordering::Relaxed);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_increments_add_up_across_slots() {
        let name = format!("/stattest-{}", std::process::id());
        let r = StatsRegion::create(&name, 3).unwrap();
        std::thread::scope(|sc| {
            for t in 0..4 {
                let r = &r;
                sc.spawn(move || {
                    for _ in 0..10_000 {
                        Counters::inc(&r.slot(t % 3).requests);
                        r.slot(t % 3).status(200);
                        r.slot(t % 3).latency(300);
                    }
                });
            }
        });
        let reader = StatsRegion::open(&name).unwrap();
        let s = reader.snapshot();
        assert_eq!(s.get("requests"), 40_000);
        assert_eq!(s.get("responses_2xx"), 40_000);
        assert_eq!(s.latency_percentile(0.99), 512);
    }

    #[test]
    fn gauges_sum_across_slots() {
        let name = format!("/stattest2-{}", std::process::id());
        let r = StatsRegion::create(&name, 2).unwrap();
        Counters::inc(&r.slot(0).connections_active);
        Counters::inc(&r.slot(0).connections_active);
        Counters::dec(&r.slot(1).connections_active);
        assert_eq!(r.snapshot().get("connections_active"), 1);
    }
}

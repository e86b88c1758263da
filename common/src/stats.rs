//! Shared-memory statistics: one region per daemon (`/<instance>.stats.proxy`,
//! `/<instance>.stats.cached`), a slot of atomic counters per process (the proxy: master in
//! slot 0, worker N in slot N), summed on read. No locks on the request path: counters are
//! `fetch_add(Relaxed)`; gauges go up and down the same way (wrapping; the sum is what counts).
//!
//! One list, `stats_fields!` (its `outcomes` entry spelt out from the list of cache
//! outcomes, `with_cache_outcomes`), generates the slot layout, the names, kinds and help texts,
//! and through them the JSON (`/__shmproxy/stats`, `proxy stats --json`), the Prometheus text
//! (`/__shmproxy/metrics`), the `proxy stats` screen and the README's table of counters
//! ([`markdown_table`]). A field may name the daemon that updates it (`@proxy`, `@cached`;
//! default: both) and a labelled Prometheus family it belongs to (`[family label = "value"]`).
//! The pool gauges are not counters: they are read from the pool's state words ([`View`]).
//!
//! The cached region's header also announces the live `cached` (owner pid + start time):
//! workers read it to know whether anyone will answer their doorbells. After its slots, the
//! cached region holds the table of sites and upstream servers ([`upstream`]): names, state
//! and per-row counters, written by cached only, shown as `sites`/`servers` in the JSON and
//! as `shmproxy_site_*`/`shmproxy_upstream_*` families in the Prometheus text.
//!
//! Layout: the region header (32 bytes), a [`StatsHeader`] (slot count, table offset), the
//! slots from byte 64, then (cached only) the [`Upstreams`] table. The region's version,
//! [`STATS_VERSION`], is a hash of all of it, so a reader built from another field list
//! refuses the region instead of misreading it.
//!
//! Must never: take a lock, allocate or make a syscall on the update path.

use crate::http::{with_cache_outcomes, CacheOutcome};
use crate::names::Names;
use crate::pool::{Pool, SegmentState};
use crate::request::{RejectCounter, RejectReason};
use crate::shm::{ShmError, ShmRegion, ShmSafe};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod upstream;
mod value;

pub use upstream::{
    InFlight, ServerRow, ServerState, ServerView, SiteRow, SiteView, Upstreams, MAX_SERVERS,
    MAX_SITES, NO_SITE, SERVER_FIELDS, SITE_FIELDS,
};
pub use value::FieldKind;
use value::{fnv1a, fnv1a_field, fnv1a_usize, json_value, prom_help, prom_label};

pub const STATS_MAGIC: u32 = u32::from_le_bytes(*b"SHST");
/// Bumped by hand only when a field keeps its name but changes its meaning; every change
/// of the layout moves [`STATS_VERSION`] by itself.
const STATS_SCHEMA: u32 = 7;
/// The version a region is created with and opened against: a hash of everything its layout
/// depends on (the slot's field list with names and kinds, the histogram, the header places,
/// the sites and servers tables), so a reader built from another list refuses the region.
pub const STATS_VERSION: u32 = layout_version();

/// Every field of `fields` in order, then their number.
const fn fnv1a_fields(mut h: u32, fields: &[Field]) -> u32 {
    let mut i = 0;
    while i < fields.len() {
        h = fnv1a_field(h, fields[i].name, fields[i].kind);
        i += 1;
    }
    fnv1a_usize(h, fields.len())
}

const fn layout_version() -> u32 {
    let mut h = fnv1a(0x811c_9dc5, &STATS_SCHEMA.to_le_bytes());
    h = fnv1a_fields(h, FIELDS);
    h = fnv1a_usize(h, LATENCY_BUCKETS);
    h = fnv1a_usize(h, size_of::<Counters>());
    h = fnv1a_usize(h, STATS_HEADER_OFFSET);
    h = fnv1a_usize(h, size_of::<StatsHeader>());
    h = fnv1a_usize(h, SLOTS_OFFSET);
    upstream::layout_hash(h)
}

/// Where the [`StatsHeader`] lies (right after the region header).
const STATS_HEADER_OFFSET: usize = 32;
const SLOTS_OFFSET: usize = 64;
/// Latency histogram buckets: bucket i counts requests that took at most 2^i µs (and more than
/// 2^(i-1) µs); the last one also takes everything slower (≈ 67 s and up).
pub const LATENCY_BUCKETS: usize = 28;

/// Which daemon updates a field (and so in which region it is shown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Proxy,
    Cached,
    Both,
}

impl Daemon {
    pub fn as_str(self) -> &'static str {
        match self {
            Daemon::Proxy => "proxy",
            Daemon::Cached => "cached",
            Daemon::Both => "both",
        }
    }
}

/// A labelled Prometheus family a field is one member of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub label: &'static str,
    pub value: &'static str,
}

#[derive(Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FieldKind,
    pub daemon: Daemon,
    pub family: Option<Family>,
}

impl Field {
    /// Whether `region` (Proxy or Cached) shows this field.
    pub fn shown_in(&self, region: Daemon) -> bool {
        self.daemon == Daemon::Both || self.daemon == region
    }

    /// Values in microseconds are exported to Prometheus in seconds (`_us` → `_seconds`).
    pub fn is_micros(&self) -> bool {
        self.family.map_or(self.name, |f| f.name).ends_with("_us")
    }

    /// Prometheus family name for `region`: `shmproxy_<region>_<name>`, `_us` turned into
    /// `_seconds`, counters ending in `_total`.
    pub fn metric_name(&self, region: Daemon) -> String {
        let base = self.family.map_or(self.name, |f| f.name);
        let base = match base.strip_suffix("_us") {
            Some(b) => format!("{b}_seconds"),
            None => base.to_string(),
        };
        let total = if self.kind == FieldKind::Counter {
            "_total"
        } else {
            ""
        };
        format!("shmproxy_{}_{base}{total}", region.as_str())
    }
}

/// The stats field list: `{ fields }`, the cache outcomes' counters (one per
/// [`CacheOutcome`], from [`with_cache_outcomes`]), `{ more fields }`.
macro_rules! stats_fields {
    (@daemon) => { Daemon::Both };
    (@daemon proxy) => { Daemon::Proxy };
    (@daemon cached) => { Daemon::Cached };
    (@family) => { None };
    (@family $family:ident $label:ident $value:literal) => {
        Some(Family { name: stringify!($family), label: stringify!($label), value: $value })
    };
    (
        [ $( $(#[$odoc:meta])* $ovariant:ident = $owire:literal, $oname:literal, $ocounter:ident; )* ]
        { $( $kind:ident $name:ident $(@ $daemon:ident)? $([$family:ident $label:ident = $value:literal])? : $help:literal ),* $(,)? }
        outcomes @ $odaemon:ident [$ofamily:ident $olabel:ident] : $ohelp:literal;
        { $( $kind2:ident $name2:ident $(@ $daemon2:ident)? $([$family2:ident $label2:ident = $value2:literal])? : $help2:literal ),* $(,)? }
    ) => {
        /// One slot of counters. Layout is generated; [`STATS_VERSION`] is derived from it.
        #[repr(C)]
        pub struct Counters {
            $( #[doc = $help] pub $name: AtomicU64, )*
            $( #[doc = $ohelp] pub $ocounter: AtomicU64, )*
            $( #[doc = $help2] pub $name2: AtomicU64, )*
            /// Request latency histogram (see `LATENCY_BUCKETS`).
            pub latency_us: [AtomicU64; LATENCY_BUCKETS],
        }

        /// Every field of [`Counters`], in layout order.
        pub const FIELDS: &[Field] = &[
            $( Field {
                name: stringify!($name),
                help: $help,
                kind: FieldKind::$kind,
                daemon: stats_fields!(@daemon $($daemon)?),
                family: stats_fields!(@family $($family $label $value)?),
            }, )*
            $( Field {
                name: stringify!($ocounter),
                help: $ohelp,
                kind: FieldKind::Counter,
                daemon: stats_fields!(@daemon $odaemon),
                family: stats_fields!(@family $ofamily $olabel $oname),
            }, )*
            $( Field {
                name: stringify!($name2),
                help: $help2,
                kind: FieldKind::$kind2,
                daemon: stats_fields!(@daemon $($daemon2)?),
                family: stats_fields!(@family $($family2 $label2 $value2)?),
            }, )*
        ];

        impl Counters {
            /// Current values in `FIELDS` order.
            pub fn values(&self) -> Vec<u64> {
                vec![
                    $( self.$name.load(Ordering::Relaxed), )*
                    $( self.$ocounter.load(Ordering::Relaxed), )*
                    $( self.$name2.load(Ordering::Relaxed), )*
                ]
            }

            /// Counts one answered request by cache outcome.
            pub fn outcome(&self, outcome: CacheOutcome) {
                let c = match outcome {
                    $( CacheOutcome::$ovariant => &self.$ocounter, )*
                };
                Self::inc(c);
            }
        }
    };
}

with_cache_outcomes!(stats_fields! {
{
    Counter requests @proxy: "Requests received from clients (complete request heads)",
    Counter interim_forwarded @proxy: "Interim answers (1xx from the origin, e.g. 103 Early Hints) sent on to HTTP/1.1 clients ahead of the final answer",
    Counter interim_dropped @proxy: "Interim answers not sent on because the client speaks HTTP/1.0 (RFC 9110 §15.2)",
    Counter requests_get @proxy [requests_by_method method = "GET"]: "Requests answered, by method",
    Counter requests_head @proxy [requests_by_method method = "HEAD"]: "Requests answered, by method",
    Counter requests_post @proxy [requests_by_method method = "POST"]: "Requests answered, by method",
    Counter requests_put @proxy [requests_by_method method = "PUT"]: "Requests answered, by method",
    Counter requests_delete @proxy [requests_by_method method = "DELETE"]: "Requests answered, by method",
    Counter requests_patch @proxy [requests_by_method method = "PATCH"]: "Requests answered, by method",
    Counter requests_options @proxy [requests_by_method method = "OPTIONS"]: "Requests answered, by method",
    Counter requests_purge @proxy [requests_by_method method = "PURGE"]: "Requests answered, by method",
    Counter requests_other @proxy [requests_by_method method = "other"]: "Requests answered, by method",
    Counter responses_1xx @proxy [responses_by_class class = "1xx"]: "Responses sent, by status class",
    Counter responses_2xx @proxy [responses_by_class class = "2xx"]: "Responses sent, by status class",
    Counter responses_3xx @proxy [responses_by_class class = "3xx"]: "Responses sent, by status class",
    Counter responses_4xx @proxy [responses_by_class class = "4xx"]: "Responses sent, by status class",
    Counter responses_5xx @proxy [responses_by_class class = "5xx"]: "Responses sent, by status class",
}
outcomes @proxy [responses_by_outcome outcome]: "Requests answered, by cache outcome (the X-Cache value)";
{
    Counter latency_sum_us @proxy: "Sum of request durations (head received to answer sent), the latency histogram's sum",
    Counter bytes_in @proxy: "Request bytes read from clients",
    Counter bytes_out @proxy: "Response bytes written to clients",
    Counter connections_accepted @proxy: "Client connections accepted by the master",
    Gauge connections_active @proxy: "Client connections open in a worker",
    Gauge connections_busy @proxy: "Client connections whose requests are executing (the rest of connections_active are idle)",
    Gauge fds_in_flight @proxy: "Connections passed by the master and not yet received by a worker",
    Gauge connections_waiting @proxy: "Connections accepted by the master and held back because every worker's channel was full",
    Counter accepts_coalesced @proxy: "Accepts the master delayed by proxy.accept_coalesce_us to take a burst of new connections whole",
    Counter channel_full @proxy: "Times the master found a worker's channel full and held connections back until it had room (none is dropped)",
    Counter bad_requests @proxy: "Requests rejected as malformed or too large (4xx before any forwarding)",
    Counter rejected_line_too_long @proxy [rejected_requests reason = "line_too_long"]: "Rejected requests, by reason",
    Counter rejected_head_too_large @proxy [rejected_requests reason = "head_too_large"]: "Rejected requests, by reason",
    Counter rejected_framing @proxy [rejected_requests reason = "framing"]: "Rejected requests, by reason",
    Counter rejected_body_too_large @proxy [rejected_requests reason = "body_too_large"]: "Rejected requests, by reason",
    Counter rejected_malformed @proxy [rejected_requests reason = "malformed"]: "Rejected requests, by reason",
    Counter timeouts_header @proxy: "Connections closed because the request head was not received in time (408)",
    Counter timeouts_idle @proxy: "Idle keep-alive connections closed",
    Counter timeouts_send @proxy: "Connections closed because the client did not read in time",
    Counter slow_client_closed @proxy: "Connections closed because the client sent its body or read its answer below proxy.min_recv_rate / min_send_rate",
    Counter slow_client_refused @proxy: "Transfers refused (503, or a close mid-answer) because proxy.client_wait_threads threads were already waiting on slow clients",
    Counter connections_refused @proxy: "Connections closed at once because a worker had max_connections open",
    Counter connections_handed_off @proxy: "Ready connections an exec thread passed to a waiting thread because it was about to block (on cached or a slow client)",
    Counter cached_unavailable @proxy: "Requests answered 503 because cached was not running",
    Counter cached_timeouts @proxy: "Transfers aborted because cached did not answer in time",
    Counter pool_acquires @proxy: "Segments leased from the pool",
    Counter pool_acquire_wait_us @proxy: "Time spent waiting for a free segment",
    Counter pool_acquire_timeouts @proxy: "Segment leases that timed out (503)",
    Counter transfers_aborted: "Segment transfers aborted (client gone, peer died, timeout)",
    Counter worker_restarts @proxy: "Workers forked to replace one that died",
    Counter reloads @proxy: "SIGHUP reloads: configuration re-read and workers replaced",
    Counter handovers @proxy: "Listening sockets handed to a new master (zero-downtime upgrade)",
    Counter segments_reclaimed @proxy: "Segments reclaimed from dead processes",
    Counter segments_trimmed @proxy: "Times a segment free for 5 s gave its pages back to the system (MADV_REMOVE); the next lease faults them in again",
    Counter arena_pins_released @proxy: "Arena pins of dead workers released by the master when it reaped them",
    Counter messages_rejected: "Doorbells or segment heads that failed validation",
    Counter request_panics: "Requests whose handling panicked: that request alone failed (aborted or closed), its thread went on",
    Counter threads_restarted: "Long-lived threads whose loop panicked and was started again (thread pools never shrink)",
    Counter log_reopens @proxy: "SIGUSR1 received by the master: every worker reopens its access log",
    Counter access_log_lines @proxy: "Access log lines written",
    Counter access_log_dropped @proxy: "Access log lines lost (the log could not be opened or written)",
    Counter access_log_rotations @proxy: "Access log rotations (size limit reached)",
    Counter arena_hits @proxy: "Fresh hits a worker answered from the shared cache arena, without a message to cached",
    Counter arena_misses @proxy: "Arena lookups that went on to cached (not stored, not fresh for the request, no pin slot, or no arena)",
    Counter arena_streams @proxy: "Answers a worker streamed from an arena record still being filled (found by its lookup, or named by cached for a collapsed waiter), sending body bytes as they were committed",
    Counter arena_stream_aborts @proxy: "Streamed answers cut short: the fill was abandoned (origin failure) or made no progress within proxy.cached_timeout_ms",
    Counter arena_follow_misses @proxy: "Arena records cached named for a collapsed waiter that the worker no longer found (asked cached again)",
    Counter arena_bad_meta @proxy: "Arena objects whose metadata failed to decode (answered through cached instead)",
    Counter arena_spliced @proxy: "Arena hits whose body's whole pages left by reference (sendfile from the arena's file) instead of being copied: complete bodies of 32 KiB or more",
    Counter arena_file_changes @proxy: "Arena copies of document-root files not served because the file on disk is no longer the one read (size, mtime, inode or path changed, or gone): answered through cached, which reads it again",
    Counter request_bodies_discarded @proxy: "Request bodies read and thrown away before an answer that did not need them (arena hit, /__shmproxy/), so the next request is parsed where it starts",
    Counter forwarding_headers_dropped @proxy: "Client-supplied X-Forwarded-*/Forwarded fields dropped (the peer is not in trusted_proxies)",
    Counter loops_refused @proxy: "Requests refused with 508 Loop Detected: their Via already named this node",
    Gauge draining @proxy: "1 while a stopping proxy drains (proxy.drain_ms): /__shmproxy/health answers 503 and requests are still served",
    Counter l2_hits @cached: "Requests answered from the cached LRU",
    Counter l2_misses @cached: "Cacheable requests not found in the LRU",
    Counter l2_stale @cached: "Stale stored answers served (max-stale, or origin unreachable)",
    Counter l2_revalidated @cached: "Stale stored answers revalidated with the origin (304)",
    Counter stale_while_revalidate @cached: "Stale stored answers served at once while one background refresh ran (stale-while-revalidate)",
    Counter stale_if_error @cached: "Stale stored answers served because the origin failed or answered 500/502/503/504 (stale-if-error or grace)",
    Counter background_refreshes @cached: "Background refreshes of stale answers sent to the origin (one per key at a time)",
    Counter background_refresh_failures @cached: "Background refreshes that failed (the stale answer stays until its windows end)",
    Counter collapsed @cached: "Requests that followed another request's fill instead of fetching",
    Counter fills_streamed @cached: "Fills exposed in the shared arena while they arrived (storable, declared length that fits a record): workers stream them from there",
    Counter arena_early_follows @cached: "Waiters for a fill's head that gave their segment back because the pool ran short (a quarter or less free): their worker looks for the fill in the arena and asks again",
    Counter arena_follows @cached: "Collapsed waiters answered with the arena record of their fill (their segment freed at once) instead of a copy of its bytes",
    Counter passes @cached: "Requests passed to the source without caching",
    Counter evictions @cached: "Objects evicted from the LRU",
    Gauge stored_objects @cached: "Objects stored in the LRU",
    Gauge stored_bytes @cached: "Bytes the LRU is charged: every entry's head, key and bookkeeping, and the bodies cached holds itself (stored_body_bytes); bodies in the arena count in arena_bytes",
    Gauge stored_body_bytes @cached: "Body bytes cached holds in its own memory: files, 206 pieces and answers the arena refused (a body published in the arena is kept there only)",
    Gauge arena_objects @cached: "Objects published in the shared cache arena (workers serve their fresh hits)",
    Gauge arena_bytes @cached: "Bytes of the objects published in the arena (records: body, key, metadata)",
    Counter arena_evictions @cached: "Objects the arena evicted to make room, since it was created (adoptions keep the count)",
    Counter arena_adoptions @cached: "Times cached started by adopting the arena a previous cached left",
    Counter arena_trimmed_bytes @cached: "Bytes of the arena's free space (evicted, not yet written again) given back to the system after 5 s without a store",
    Counter arena_lost @cached: "Stored heads whose body the arena no longer held (its ring evicted it, or it was replaced): dropped as misses",
    Counter arena_refused @cached: "Stored answers not published in the arena (its space held by pins or fills, too large for a record, or a file already under as many keys as it may be)",
    Counter disk_reads @cached: "Files read from the document root",
    Counter upstream_requests @cached: "Requests sent to the origin",
    Counter purges_forwarded @cached: "PURGE requests also sent to the origin (cached.purge_forward)",
    Counter purge_forward_failures @cached: "Forwarded PURGE requests the origin did not answer",
    Counter upstream_errors @cached: "Origin requests that failed (refused, reset, bad answer)",
    Counter upstream_timeouts @cached: "Origin requests that timed out",
    Counter upstream_bad_framing @cached: "Origin answers refused with 502: framing that cannot be reproduced exactly (Transfer-Encoding with Content-Length, a coding other than chunked, a bad or repeated Content-Length, an unsolicited 101)",
    Counter upstream_interim @cached: "Interim answers (1xx other than 100 Continue, e.g. 103 Early Hints) received from origins",
    Counter upstream_interim_dropped @cached: "Interim answers not forwarded: no client waited for them (a background refresh, a request with a body)",
    Counter set_cookie_passed @cached: "Cacheable answers with Set-Cookie passed to their own client only, not stored (set_cookie = \"pass\")",
    Counter set_cookie_stripped @cached: "Answers stored without their Set-Cookie field (set_cookie = \"strip\")",
    Counter upstream_latency_us @cached: "Sum of origin response-head latencies",
    Counter upstream_tls_errors @cached: "Origin connections that failed their TLS handshake or certificate verification (untrusted, expired, wrong name, not TLS)",
    Counter upstream_retries @cached: "Idempotent requests retried once on a fresh connection or another server after their connection failed before any response byte",
    Counter upstream_server_down_events @cached: "Times an origin server was taken out of rotation (failed requests or health checks); the servers table has the current state",
    Counter misdirected_requests @cached: "Requests answered 421 Misdirected Request: their Host matched no site and there is no default site",
}
});

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for Counters {}

const SLOT_SIZE: usize = size_of::<Counters>().next_multiple_of(64);

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        value::add(c, n);
    }

    pub fn inc(c: &AtomicU64) {
        value::inc(c);
    }

    /// Gauges go down by wrapping subtraction; the sum over slots is what is read.
    pub fn dec(c: &AtomicU64) {
        value::dec(c);
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

    /// Counts one finished request's duration (histogram bucket and sum).
    pub fn latency(&self, us: u64) {
        Self::inc(&self.latency_us[latency_bucket(us)]);
        Self::add(&self.latency_sum_us, us);
    }

    /// Counts one answered request by method.
    pub fn method(&self, method: &str) {
        let c = match method {
            "GET" => &self.requests_get,
            "HEAD" => &self.requests_head,
            "POST" => &self.requests_post,
            "PUT" => &self.requests_put,
            "DELETE" => &self.requests_delete,
            "PATCH" => &self.requests_patch,
            "OPTIONS" => &self.requests_options,
            "PURGE" => &self.requests_purge,
            _ => &self.requests_other,
        };
        Self::inc(c);
    }

    /// Counts a request refused before forwarding (`bad_requests` and its reason).
    pub fn rejected(&self, why: RejectReason) {
        Self::inc(&self.bad_requests);
        let c = match why.verdict().1 {
            RejectCounter::LineTooLong => &self.rejected_line_too_long,
            RejectCounter::HeadTooLarge => &self.rejected_head_too_large,
            RejectCounter::Framing => &self.rejected_framing,
            RejectCounter::BodyTooLarge => &self.rejected_body_too_large,
            RejectCounter::Malformed => &self.rejected_malformed,
        };
        Self::inc(c);
    }
}

/// Histogram bucket of a duration in µs: the smallest i with `us ≤ 2^i` (capped).
pub fn latency_bucket(us: u64) -> usize {
    (64 - us.saturating_sub(1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
}

/// Upper bound of histogram bucket `i` in µs.
pub fn bucket_bound_us(i: usize) -> u64 {
    1u64 << i
}

/// Layout words of a stats region, after its region header; written before `publish`.
#[repr(C)]
pub struct StatsHeader {
    /// Number of counter slots.
    pub slots: AtomicU64,
    /// Byte offset of the [`Upstreams`] table (0: this region has none).
    pub tables: AtomicU64,
}

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for StatsHeader {}

const _: () = assert!(size_of::<crate::shm::RegionHeader>() <= STATS_HEADER_OFFSET);
const _: () = assert!(STATS_HEADER_OFFSET + size_of::<StatsHeader>() <= SLOTS_OFFSET);

/// A stats region (owner: creates and unlinks; others: open to read).
pub struct StatsRegion {
    region: ShmRegion,
    slots: usize,
    /// Offset of the sites/servers table, if the region has one (cached's).
    tables: Option<usize>,
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

    /// Requests in the latency histogram.
    pub fn latency_count(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// Approximate latency percentile in µs (upper bound of the bucket), `q` in 0..=1.
    pub fn latency_percentile(&self, q: f64) -> u64 {
        percentile(&self.latency, q)
    }
}

/// Upper bound (µs) of the bucket holding quantile `q` of `buckets` (0 when empty).
pub fn percentile(buckets: &[u64], q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return bucket_bound_us(i);
        }
    }
    bucket_bound_us(buckets.len().saturating_sub(1))
}

impl StatsRegion {
    /// A region of `slots` counter slots (the proxy's).
    pub fn create(name: &str, slots: usize) -> Result<StatsRegion, ShmError> {
        Self::create_layout(name, slots, false)
    }

    /// A region of `slots` counter slots followed by the table of sites and servers
    /// (cached's; its rows stay hidden until the upstream code publishes them).
    pub fn create_with_tables(name: &str, slots: usize) -> Result<StatsRegion, ShmError> {
        Self::create_layout(name, slots, true)
    }

    fn create_layout(name: &str, slots: usize, tables: bool) -> Result<StatsRegion, ShmError> {
        let slots_end = SLOTS_OFFSET + slots * SLOT_SIZE;
        let (len, table) = if tables {
            (slots_end + size_of::<Upstreams>(), Some(slots_end))
        } else {
            (slots_end, None)
        };
        let region = ShmRegion::create(name, len, STATS_MAGIC, STATS_VERSION)?;
        let h: &StatsHeader = region.get(STATS_HEADER_OFFSET);
        h.slots.store(slots as u64, Ordering::Relaxed);
        h.tables.store(table.unwrap_or(0) as u64, Ordering::Relaxed);
        // The header's words are ordered before readers by `publish`'s Release.
        region.publish(STATS_MAGIC);
        Ok(StatsRegion {
            region,
            slots,
            tables: table,
        })
    }

    pub fn open(name: &str) -> Result<StatsRegion, ShmError> {
        let region = ShmRegion::open(name, STATS_MAGIC, STATS_VERSION)?;
        let invalid = |why: &str| ShmError::Invalid {
            name: name.to_string(),
            why: why.to_string(),
        };
        let h: &StatsHeader = region.get(STATS_HEADER_OFFSET);
        let slots = h.slots.load(Ordering::Relaxed) as usize;
        let slots_end = slots
            .checked_mul(SLOT_SIZE)
            .and_then(|n| n.checked_add(SLOTS_OFFSET))
            .filter(|&end| end <= region.len())
            .ok_or_else(|| invalid("slot count does not fit the region"))?;
        let tables = match h.tables.load(Ordering::Relaxed) as usize {
            0 => None,
            t if t == slots_end && t + size_of::<Upstreams>() <= region.len() => Some(t),
            _ => return Err(invalid("bad offset of the sites table")),
        };
        Ok(StatsRegion {
            region,
            slots,
            tables,
        })
    }

    /// The table of sites and servers (cached's region only).
    pub fn upstreams(&self) -> Option<&Upstreams> {
        self.tables.map(|t| self.region.get(t))
    }

    /// Site row `i` (`None` past [`MAX_SITES`] or in a region without the table).
    pub fn site(&self, i: usize) -> Option<&SiteRow> {
        self.upstreams()?.sites.get(i)
    }

    /// Server row `i` (`None` past [`MAX_SERVERS`] or in a region without the table).
    pub fn server(&self, i: usize) -> Option<&ServerRow> {
        self.upstreams()?.servers.get(i)
    }

    /// Counts one answer in its site's row (`requests`, outcome, `errors`); nothing for
    /// [`NO_SITE`] or a row past the table. Call it once per answer, beside the
    /// `respond::Meta` that carries the same `site`.
    pub fn site_answered(&self, site: u16, outcome: crate::http::CacheOutcome, status: u16) {
        if let Some(row) = self.site(usize::from(site)) {
            row.answered(outcome, status);
        }
    }

    /// The name of the site an answer's head names (`None` for [`NO_SITE`], a row out of
    /// range or not published).
    pub fn site_name(&self, site: u16) -> Option<String> {
        self.site(usize::from(site))?.name()
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

    /// Hands the name to a successor (our mapping stays valid).
    pub fn unlink_name(&mut self) {
        self.region.unlink_name();
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

// ---------------------------------------------------------------------------------------------
// Rendering: one view of both daemons and the pool, as JSON, Prometheus text or a table.
// ---------------------------------------------------------------------------------------------

/// The segment pool as seen from its state words.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolView {
    pub segments: u32,
    pub segment_size: usize,
    pub free: u32,
    pub in_use: u32,
    pub quarantined: u32,
    /// One character per segment: `.` free, `U` in use, `Q` quarantined.
    pub states: String,
}

impl PoolView {
    pub fn read(pool: &Pool) -> PoolView {
        let mut v = PoolView {
            segments: pool.segments(),
            segment_size: pool.segment_size(),
            ..PoolView::default()
        };
        for i in 0..pool.segments() {
            let (c, n) = match pool.state_of(i) {
                SegmentState::Free => ('.', &mut v.free),
                SegmentState::InUse => ('U', &mut v.in_use),
                SegmentState::Quarantined => ('Q', &mut v.quarantined),
            };
            v.states.push(c);
            *n += 1;
        }
        v
    }
}

/// One proxy worker's own slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerView {
    /// 1-based worker index (its stats slot).
    pub worker: usize,
    pub connections_active: i64,
    pub connections_idle: i64,
    pub requests: u64,
    pub bytes_out: u64,
}

/// Everything the stats endpoints and `proxy stats` show, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub instance: String,
    /// The node name (`node`), when the reader knows it (the proxy's endpoints do; `proxy
    /// stats` reading shared memory does not).
    pub node: Option<String>,
    /// Wall-clock time of the reading, in ms since the Unix epoch (for rates).
    pub time_ms: u64,
    pub pool: Option<PoolView>,
    pub proxy: Option<Snapshot>,
    pub workers: Vec<WorkerView>,
    /// The live cached's counters and pid (`None` when cached is not running).
    pub cached: Option<(Snapshot, u32)>,
    /// The live cached's published site rows (empty in disk mode or without cached).
    pub sites: Vec<SiteView>,
    /// The live cached's published upstream server rows.
    pub servers: Vec<ServerView>,
}

impl View {
    /// Reads the proxy's region and pool (when given) and the live cached's region, if any.
    pub fn collect(names: &Names, proxy: Option<&StatsRegion>, pool: Option<&Pool>) -> View {
        let cached_region = StatsRegion::open(&names.stats_cached)
            .ok()
            .filter(|r| r.owner().alive());
        let cached = cached_region
            .as_ref()
            .map(|r| (r.snapshot(), r.owner().pid));
        let (sites, servers) = cached_region
            .as_ref()
            .and_then(StatsRegion::upstreams)
            .map(|t| {
                let sites = t.read_sites();
                let servers = t.read_servers(&sites);
                (sites, servers)
            })
            .unwrap_or_default();
        let workers = proxy
            .map(|r| {
                (1..r.slots())
                    .map(|i| {
                        let s = r.slot(i);
                        let active = s.connections_active.load(Ordering::Relaxed) as i64;
                        let busy = s.connections_busy.load(Ordering::Relaxed) as i64;
                        WorkerView {
                            worker: i,
                            connections_active: active,
                            connections_idle: (active - busy).max(0),
                            requests: s.requests.load(Ordering::Relaxed),
                            bytes_out: s.bytes_out.load(Ordering::Relaxed),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        View {
            instance: names.instance.clone(),
            node: None,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            pool: pool.map(PoolView::read),
            proxy: proxy.map(StatsRegion::snapshot),
            workers,
            cached,
            sites,
            servers,
        }
    }

    /// The JSON document of `/__shmproxy/stats` (keys in this order: readers such as the
    /// e2e harness look for `{"instance":` first).
    pub fn json(&self) -> String {
        let pool = self.pool.as_ref().map(|p| {
            json!({
                "segments": p.segments,
                "segment_size": p.segment_size,
                "free": p.free,
                "in_use": p.in_use,
                "quarantined": p.quarantined,
                "states": p.states,
            })
        });
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                json!({
                    "worker": w.worker,
                    "connections_active": w.connections_active,
                    "connections_idle": w.connections_idle,
                    "requests": w.requests,
                    "bytes_out": w.bytes_out,
                })
            })
            .collect();
        let mut doc = Map::new();
        doc.insert("instance".into(), json!(self.instance));
        doc.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        doc.insert("time_ms".into(), json!(self.time_ms));
        if let Some(node) = &self.node {
            doc.insert("node".into(), json!(node));
        }
        let rest = json!({
            "pool": pool,
            "proxy": self.proxy.as_ref().map(|s| snapshot_json(s, Daemon::Proxy, None)),
            "workers": workers,
            "cached": self.cached.as_ref().map(|(s, pid)| snapshot_json(s, Daemon::Cached, Some(*pid))),
            "sites": upstream::sites_json(&self.sites),
            "servers": upstream::servers_json(&self.servers),
        });
        if let Value::Object(rest) = rest {
            doc.extend(rest);
        }
        Value::Object(doc).to_string()
    }

    /// The Prometheus text exposition (format 0.0.4) of `/__shmproxy/metrics`.
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(16384);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {}", prom_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "shmproxy_info",
            "gauge",
            "Always 1; labels name the shmproxy instance (`name`, not `instance`, which Prometheus sets at scrape time), the cluster node and the version",
        );
        let node = self
            .node
            .as_ref()
            .map(|n| format!("node=\"{}\",", prom_label(n)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "shmproxy_info{{name=\"{}\",{node}version=\"{}\"}} 1",
            prom_label(&self.instance),
            env!("CARGO_PKG_VERSION")
        );
        family(
            &mut out,
            "shmproxy_cached_up",
            "gauge",
            "1 while a live cached announces itself in shared memory, else 0",
        );
        let _ = writeln!(
            out,
            "shmproxy_cached_up {}",
            u8::from(self.cached.is_some())
        );
        if let Some(p) = &self.pool {
            family(
                &mut out,
                "shmproxy_pool_segments",
                "gauge",
                "Segments in the shared-memory pool",
            );
            let _ = writeln!(out, "shmproxy_pool_segments {}", p.segments);
            family(
                &mut out,
                "shmproxy_pool_segment_size_bytes",
                "gauge",
                "Bytes per segment",
            );
            let _ = writeln!(out, "shmproxy_pool_segment_size_bytes {}", p.segment_size);
            family(
                &mut out,
                "shmproxy_pool_segments_by_state",
                "gauge",
                "Segments by state (free, in_use, quarantined)",
            );
            for (state, n) in [
                ("free", p.free),
                ("in_use", p.in_use),
                ("quarantined", p.quarantined),
            ] {
                let _ = writeln!(
                    out,
                    "shmproxy_pool_segments_by_state{{state=\"{state}\"}} {n}"
                );
            }
        }
        if let Some(s) = &self.proxy {
            snapshot_prometheus(&mut out, s, Daemon::Proxy);
            histogram_prometheus(&mut out, s);
        }
        if !self.workers.is_empty() {
            family(
                &mut out,
                "shmproxy_worker_connections",
                "gauge",
                "Client connections open in each worker, by state (busy = executing a request)",
            );
            for w in &self.workers {
                for (state, n) in [
                    ("idle", w.connections_idle),
                    ("busy", w.connections_active - w.connections_idle),
                ] {
                    let _ = writeln!(
                        out,
                        "shmproxy_worker_connections{{worker=\"{}\",state=\"{state}\"}} {n}",
                        w.worker
                    );
                }
            }
            family(
                &mut out,
                "shmproxy_worker_requests_total",
                "counter",
                "Requests received by each worker (since it started)",
            );
            for w in &self.workers {
                let _ = writeln!(
                    out,
                    "shmproxy_worker_requests_total{{worker=\"{}\"}} {}",
                    w.worker, w.requests
                );
            }
        }
        if let Some((s, _)) = &self.cached {
            snapshot_prometheus(&mut out, s, Daemon::Cached);
        }
        upstream::tables_prometheus(&mut out, &self.sites, &self.servers);
        out
    }
}

fn snapshot_json(s: &Snapshot, region: Daemon, pid: Option<u32>) -> Value {
    let mut m: Map<String, Value> = FIELDS
        .iter()
        .zip(&s.values)
        .filter(|(f, _)| f.shown_in(region))
        .map(|(f, &v)| (f.name.to_string(), json_value(f.kind, v)))
        .collect();
    if region == Daemon::Proxy {
        m.insert("latency_count".into(), s.latency_count().into());
        for (key, q) in [
            ("latency_p50_us", 0.5),
            ("latency_p90_us", 0.9),
            ("latency_p99_us", 0.99),
        ] {
            m.insert(key.into(), s.latency_percentile(q).into());
        }
        m.insert("latency_buckets".into(), s.latency.clone().into());
    }
    if let Some(pid) = pid {
        m.insert("cached_pid".into(), pid.into());
    }
    Value::Object(m)
}

fn snapshot_prometheus(out: &mut String, s: &Snapshot, region: Daemon) {
    let mut done: Vec<String> = Vec::new();
    for f in FIELDS {
        // The histogram's sum is rendered with its buckets.
        if !f.shown_in(region) || f.name == "latency_sum_us" {
            continue;
        }
        let name = f.metric_name(region);
        if done.contains(&name) {
            continue;
        }
        done.push(name.clone());
        let kind = match f.kind {
            FieldKind::Counter => "counter",
            FieldKind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {}", prom_help(f.help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        // Every member of the family (a lone field is its own family).
        for (j, m) in FIELDS.iter().enumerate() {
            if m.metric_name(region) != name || !m.shown_in(region) {
                continue;
            }
            let labels = m
                .family
                .map(|fam| format!("{{{}=\"{}\"}}", fam.label, prom_label(fam.value)))
                .unwrap_or_default();
            let v = s.values[j];
            let _ = if m.is_micros() {
                writeln!(out, "{name}{labels} {}", v as f64 / 1e6)
            } else if m.kind == FieldKind::Gauge {
                writeln!(out, "{name}{labels} {}", v as i64)
            } else {
                writeln!(out, "{name}{labels} {v}")
            };
        }
    }
}

fn histogram_prometheus(out: &mut String, s: &Snapshot) {
    let name = "shmproxy_proxy_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Request durations, head received to answer sent (log2 buckets)"
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (i, n) in s.latency.iter().enumerate().take(LATENCY_BUCKETS - 1) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            bucket_bound_us(i) as f64 / 1e6
        );
    }
    let count = s.latency_count();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", s.get("latency_sum_us") as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}

/// The README's table of counters (Markdown), generated from [`FIELDS`].
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| field (JSON) | daemon | kind | Prometheus | meaning |\n|---|---|---|---|---|\n",
    );
    for f in FIELDS {
        let regions: &[Daemon] = match f.daemon {
            Daemon::Both => &[Daemon::Proxy, Daemon::Cached],
            Daemon::Proxy => &[Daemon::Proxy],
            Daemon::Cached => &[Daemon::Cached],
        };
        let prom: Vec<String> = regions
            .iter()
            .map(|r| {
                let labels = f
                    .family
                    .map(|fam| format!("{{{}=\"{}\"}}", fam.label, fam.value))
                    .unwrap_or_default();
                format!("`{}{labels}`", f.metric_name(*r))
            })
            .collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            f.name,
            f.daemon.as_str(),
            match f.kind {
                FieldKind::Counter => "counter",
                FieldKind::Gauge => "gauge",
            },
            prom.join(", "),
            f.help
        );
    }
    out.push_str("| `latency_buckets` | proxy | histogram | `shmproxy_proxy_request_duration_seconds` | Request durations, head received to answer sent (log2 buckets, 1 µs … 67 s); p50/p90/p99 are computed from it |\n");
    out.push_str("| `pool.*` | proxy | gauge | `shmproxy_pool_segments`, `shmproxy_pool_segment_size_bytes`, `shmproxy_pool_segments_by_state{state}` | Segment pool size and the state of each segment, read from the pool itself |\n");
    out.push_str("| `workers[]` | proxy | gauge, counter | `shmproxy_worker_connections{worker,state}`, `shmproxy_worker_requests_total{worker}` | Per-worker open connections (idle/busy) and requests |\n");
    upstream::markdown_rows(&mut out);
    out
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
                        r.slot(t % 3)
                            .method(if t % 2 == 0 { "GET" } else { "BREW" });
                    }
                });
            }
        });
        let reader = StatsRegion::open(&name).unwrap();
        let s = reader.snapshot();
        assert_eq!(s.get("requests"), 40_000);
        assert_eq!(s.get("responses_2xx"), 40_000);
        assert_eq!(s.get("requests_get"), 20_000);
        assert_eq!(s.get("requests_other"), 20_000);
        assert_eq!(s.get("latency_sum_us"), 40_000 * 300);
        assert_eq!(s.latency_count(), 40_000);
        assert_eq!(s.latency_percentile(0.99), 512);
    }

    #[test]
    fn region_layout_is_pinned() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(StatsHeader, slots), 0);
        assert_eq!(offset_of!(StatsHeader, tables), 8);
        assert_eq!(offset_of!(Counters, requests), 0);
        assert_eq!(offset_of!(Counters, latency_us), FIELDS.len() * 8);
        assert_eq!(size_of::<StatsHeader>(), 16);
        // Each field lies where its place in FIELDS says (the generated outcome counters too).
        let at = |name: &str| 8 * FIELDS.iter().position(|f| f.name == name).unwrap();
        assert_eq!(offset_of!(Counters, responses_5xx), at("responses_5xx"));
        assert_eq!(offset_of!(Counters, outcome_hit), at("outcome_hit"));
        assert_eq!(
            offset_of!(Counters, outcome_internal),
            at("outcome_internal")
        );
        assert_eq!(offset_of!(Counters, latency_sum_us), at("latency_sum_us"));
        assert_eq!(
            offset_of!(Counters, misdirected_requests),
            at("misdirected_requests")
        );
        assert_eq!(size_of::<Counters>(), (FIELDS.len() + LATENCY_BUCKETS) * 8);
        assert_eq!(SLOT_SIZE % 64, 0);
        let name = format!("/stattest3-{}", std::process::id());
        let r = StatsRegion::create_with_tables(&name, 2).unwrap();
        assert_eq!(r.tables, Some(SLOTS_OFFSET + 2 * SLOT_SIZE));
        assert_eq!(
            r.region.len(),
            SLOTS_OFFSET + 2 * SLOT_SIZE + size_of::<Upstreams>()
        );
        let seen = StatsRegion::open(&name).unwrap();
        assert_eq!((seen.slots(), seen.tables), (2, r.tables));
        // A header that does not fit the region is refused, not trusted.
        let h: &StatsHeader = r.region.get(STATS_HEADER_OFFSET);
        h.tables.store(8, Ordering::Relaxed);
        assert!(matches!(
            StatsRegion::open(&name),
            Err(ShmError::Invalid { .. })
        ));
        h.tables.store(0, Ordering::Relaxed);
        h.slots.store(1 << 40, Ordering::Relaxed);
        assert!(matches!(
            StatsRegion::open(&name),
            Err(ShmError::Invalid { .. })
        ));
        let plain = StatsRegion::create(&format!("/stattest4-{}", std::process::id()), 3).unwrap();
        assert_eq!((plain.slots(), plain.tables), (3, None));
        assert_eq!(plain.region.len(), SLOTS_OFFSET + 3 * SLOT_SIZE);
    }

    /// Renaming, reordering, adding or removing a field, or turning a counter into a gauge,
    /// each moves the version, so a reader built from the old list refuses the region.
    #[test]
    fn version_follows_the_field_list() {
        let base = fnv1a_fields(0x811c_9dc5, FIELDS);
        let changed = |edit: fn(&mut Vec<Field>)| {
            let mut v = FIELDS.to_vec();
            edit(&mut v);
            fnv1a_fields(0x811c_9dc5, &v)
        };
        let edits: [fn(&mut Vec<Field>); 5] = [
            |v| v[3].name = "requests_brew",
            |v| v.swap(1, 2),
            |v| v.push(v[0]),
            |v| v.truncate(v.len() - 1),
            |v| v[0].kind = FieldKind::Gauge,
        ];
        let mut seen = vec![base];
        for edit in edits {
            let h = changed(edit);
            assert!(!seen.contains(&h), "an edit kept the hash");
            seen.push(h);
        }
        // Merging two names into one field keeps the bytes but not the hash.
        assert_ne!(
            fnv1a_field(
                fnv1a_field(0, "ab", FieldKind::Counter),
                "c",
                FieldKind::Counter
            ),
            fnv1a_field(
                fnv1a_field(0, "a", FieldKind::Counter),
                "bc",
                FieldKind::Counter
            )
        );
        assert_eq!(STATS_VERSION, layout_version());
        assert_ne!(STATS_VERSION, 0);
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

    #[test]
    fn latency_buckets_are_upper_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 2);
        assert_eq!(latency_bucket(5), 3);
        assert_eq!(latency_bucket(1024), 10);
        assert_eq!(latency_bucket(1025), 11);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        for us in [1u64, 7, 999, 65_536, 1_000_000] {
            assert!(us <= bucket_bound_us(latency_bucket(us)));
            assert!(latency_bucket(us) == 0 || us > bucket_bound_us(latency_bucket(us) - 1));
        }
        let mut b = vec![0u64; LATENCY_BUCKETS];
        b[3] = 50; // ≤ 8 µs
        b[10] = 40; // ≤ 1024 µs
        b[20] = 10;
        assert_eq!(percentile(&b, 0.5), 8);
        assert_eq!(percentile(&b, 0.9), 1024);
        assert_eq!(percentile(&b, 0.99), 1 << 20);
        assert_eq!(percentile(&[0; 4], 0.5), 0);
    }

    #[test]
    fn field_list_is_consistent() {
        let mut names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FIELDS.len(), "duplicate field names");
        for f in FIELDS {
            assert!(
                f.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty() && !f.help.contains('\n'), "{}", f.name);
            // Members of one family agree on kind, help and daemon.
            if let Some(fam) = f.family {
                for g in FIELDS
                    .iter()
                    .filter(|g| g.family.map(|x| x.name) == Some(fam.name))
                {
                    assert_eq!((g.kind, g.help, g.daemon), (f.kind, f.help, f.daemon));
                    assert_eq!(g.family.unwrap().label, fam.label);
                }
            }
        }
        assert_eq!(
            FIELDS
                .iter()
                .find(|f| f.name == "upstream_latency_us")
                .unwrap()
                .metric_name(Daemon::Cached),
            "shmproxy_cached_upstream_latency_seconds_total"
        );
    }

    #[test]
    fn refusals_count_in_their_reason() {
        let name = format!("/stattest5-{}", std::process::id());
        let r = StatsRegion::create(&name, 1).unwrap();
        for why in [
            RejectReason::LineTooLong,
            RejectReason::TargetTooLongForSegment,
            RejectReason::TooManyHeaders,
            RejectReason::BodyTooLarge,
            RejectReason::LengthAndChunked,
            RejectReason::MalformedBody,
            RejectReason::MissingHost,
        ] {
            r.slot(0).rejected(why);
        }
        let s = r.snapshot();
        assert_eq!(s.get("bad_requests"), 7);
        assert_eq!(s.get("rejected_line_too_long"), 2);
        assert_eq!(s.get("rejected_head_too_large"), 1);
        assert_eq!(s.get("rejected_body_too_large"), 1);
        assert_eq!(s.get("rejected_framing"), 2);
        assert_eq!(s.get("rejected_malformed"), 1);
    }

    fn sample_view() -> View {
        let mut proxy = Snapshot {
            values: vec![0; FIELDS.len()],
            latency: vec![0; LATENCY_BUCKETS],
        };
        let set = |s: &mut Snapshot, name: &str, v: u64| {
            let i = FIELDS.iter().position(|f| f.name == name).unwrap();
            s.values[i] = v;
        };
        set(&mut proxy, "requests", 7);
        set(&mut proxy, "requests_get", 5);
        set(&mut proxy, "requests_head", 2);
        set(&mut proxy, "connections_active", 3);
        set(&mut proxy, "latency_sum_us", 2_500_000);
        proxy.latency[0] = 3;
        proxy.latency[LATENCY_BUCKETS - 1] = 4;
        let mut cached = proxy.clone();
        set(&mut cached, "upstream_latency_us", 1_500_000);
        View {
            instance: "i\"x".into(),
            node: Some("edge\"1".into()),
            time_ms: 1,
            pool: Some(PoolView {
                segments: 3,
                segment_size: 4096,
                free: 1,
                in_use: 1,
                quarantined: 1,
                states: ".UQ".into(),
            }),
            proxy: Some(proxy),
            workers: vec![WorkerView {
                worker: 1,
                connections_active: 3,
                connections_idle: 1,
                requests: 7,
                bytes_out: 9,
            }],
            cached: Some((cached, 42)),
            sites: vec![SiteView {
                index: 0,
                name: "shop \"a\"".into(),
                values: (1..=SITE_FIELDS.len() as u64).collect(),
            }],
            servers: vec![ServerView {
                index: 0,
                site: 0,
                site_name: "shop \"a\"".into(),
                url: "https://10.0.0.1:8443/p".into(),
                state: ServerState::Down,
                last_change: 1_700_000_000,
                values: vec![3; SERVER_FIELDS.len()],
            }],
        }
    }

    #[test]
    fn prometheus_text_has_help_and_type_for_every_family() {
        let text = sample_view().prometheus();
        let mut helped = Vec::new();
        let mut typed = Vec::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.splitn(4, ' ').collect();
            match parts.as_slice() {
                ["#", "HELP", name, _] => helped.push(name.to_string()),
                ["#", "TYPE", name, _] => typed.push(name.to_string()),
                _ => {
                    let name = line.split(['{', ' ']).next().unwrap();
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| {
                            name.strip_suffix(s)
                                .filter(|b| typed.iter().any(|t| t == b))
                        })
                        .unwrap_or(name);
                    assert!(typed.iter().any(|t| t == base), "no TYPE before {line}");
                    assert!(helped.iter().any(|t| t == base), "no HELP before {line}");
                    let value = line.rsplit(' ').next().unwrap();
                    assert!(value.parse::<f64>().is_ok(), "{line}");
                }
            }
        }
        assert_eq!(helped, typed);
        let mut sorted = typed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), typed.len(), "a family is declared twice");
        assert!(text.contains("shmproxy_proxy_requests_by_method_total{method=\"GET\"} 5\n"));
        assert!(text.contains("shmproxy_proxy_connections_active 3\n"));
        assert!(text.contains("shmproxy_cached_upstream_latency_seconds_total 1.5\n"));
        assert!(
            text.contains("shmproxy_proxy_request_duration_seconds_bucket{le=\"0.000001\"} 3\n")
        );
        assert!(text.contains("shmproxy_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 7\n"));
        assert!(text.contains("shmproxy_proxy_request_duration_seconds_sum 2.5\n"));
        assert!(text.contains("shmproxy_pool_segments_by_state{state=\"quarantined\"} 1\n"));
        assert!(text.contains("shmproxy_info{name=\"i\\\"x\",node=\"edge\\\"1\",version="));
        assert!(
            !text.contains("instance="),
            "Prometheus sets `instance` at scrape time"
        );
        assert!(
            !text.contains("shmproxy_cached_requests_total"),
            "proxy-only field in cached"
        );
        assert!(text.contains("shmproxy_site_requests_total{site=\"shop \\\"a\\\"\"} 1\n"));
        assert!(text.contains(
            "shmproxy_upstream_up{site=\"shop \\\"a\\\"\",server=\"https://10.0.0.1:8443/p\"} 0\n"
        ));
        assert!(text.contains("shmproxy_cached_upstream_tls_errors_total 0\n"));
    }

    #[test]
    fn json_is_shaped_as_documented() {
        let j = sample_view().json();
        assert!(j.starts_with("{\"instance\":\"i\\\"x\""), "{j}");
        assert!(
            j.contains(",\"time_ms\":1,\"node\":\"edge\\\"1\",\"pool\":"),
            "{j}"
        );
        assert!(j.contains("\"states\":\".UQ\""));
        assert!(j.contains("\"requests\":7,"));
        assert!(j.contains("\"latency_count\":7,"));
        assert!(j.contains(
            "\"workers\":[{\"worker\":1,\"connections_active\":3,\"connections_idle\":1"
        ));
        assert!(j.contains("\"cached_pid\":42}"));
        assert!(j.contains(",\"sites\":[{\"index\":0,\"name\":\"shop \\\"a\\\"\",\"requests\":1,"));
        assert!(j.contains(",\"state\":\"down\",\"last_change\":1700000000,\"requests\":3,"));
        assert!(j.ends_with("}]}"));
        let unnamed = View {
            node: None,
            ..sample_view()
        };
        assert!(unnamed.json().contains(",\"time_ms\":1,\"pool\":"));
    }

    /// When the README carries the counters table between its markers, it must be the
    /// generated one (`proxy stats --markdown` prints it).
    #[test]
    fn readme_table_matches_the_field_list() {
        let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let text = std::fs::read_to_string(readme).expect("README.md at the workspace root");
        let (begin, end) = ("<!-- counters:begin -->\n", "<!-- counters:end -->");
        let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
            panic!("README.md lacks the counters markers");
        };
        assert_eq!(
            &text[b + begin.len()..e],
            markdown_table(),
            "README.md's counters table is stale: regenerate it with `proxy stats --markdown`"
        );
    }
}

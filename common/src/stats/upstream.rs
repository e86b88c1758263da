//! The cached region's table of sites and upstream servers: [`MAX_SITES`] site rows and
//! [`MAX_SERVERS`] server rows at a fixed place after the counter slots ([`Upstreams`]).
//!
//! Names and the server rows are written only by `cached` (the upstream code: names once at
//! start, then counters and the up/down state). A site row's answer counters are counted by
//! the worker that delivers the answer ([`SiteRow::answered`], from the response head's site
//! index), which also looks up the site's name there for the access log; the proxy's stats
//! endpoints and `proxy stats` read it all.
//!
//! Publication of a row's text (a site's name; a server's site index and URL) is a small
//! sequence lock, so a reader never shows a torn name:
//!
//! | `seq`     | meaning                                   |
//! |-----------|-------------------------------------------|
//! | 0         | never published: the row is not shown     |
//! | odd       | being (re)written by `publish`            |
//! | even ≥ 2  | stable: the text may be read              |
//!
//! `publish` runs from one thread at a time (cached's start, or a reload). Counters are plain
//! `fetch_add(Relaxed)` like the slots' counters, outside the sequence lock.
//!
//! Must never: take a lock, allocate or make a syscall on the per-request update path
//! (`SiteRow::answered`, `ServerRow::request`, the counters). A state change
//! (`ServerRow::set_up`) reads the clock: it happens on health transitions only.

use super::value::{self, fnv1a_field, fnv1a_usize, json_value, prom_help, prom_label, FieldKind};
use crate::http::CacheOutcome;
use crate::shm::ShmSafe;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Rows of sites. A configuration with more sites shows the first ones only.
pub const MAX_SITES: usize = 32;
/// Rows of upstream servers (all sites together).
pub const MAX_SERVERS: usize = 64;
/// Words (8 bytes each) of a site name or a server URL: 128 bytes, longer text is cut at a
/// character boundary.
pub const TEXT_WORDS: usize = 16;
/// The site index of an answer that no site produced (disk mode, a 421, cached's own
/// errors before the site is known).
pub const NO_SITE: u16 = u16::MAX;
/// How often a reader retries a row being rewritten before it gives up on it for this read.
const READ_TRIES: usize = 64;

/// A field of a site or server row (one JSON key, one Prometheus family).
pub struct RowField {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FieldKind,
}

/// Short text in shared memory: its length and its bytes packed little-endian into words.
#[repr(C)]
pub struct ShmText {
    len: AtomicU64,
    words: [AtomicU64; TEXT_WORDS],
}

impl ShmText {
    pub const CAPACITY: usize = TEXT_WORDS * 8;

    /// Stores `s`, cut to [`ShmText::CAPACITY`] bytes at a character boundary.
    fn store(&self, s: &str) {
        let mut end = s.len().min(Self::CAPACITY);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let bytes = &s.as_bytes()[..end];
        for (i, w) in self.words.iter().enumerate() {
            let mut chunk = [0u8; 8];
            let (lo, hi) = ((i * 8).min(end), (i * 8 + 8).min(end));
            chunk[..hi - lo].copy_from_slice(&bytes[lo..hi]);
            w.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
        }
        self.len.store(end as u64, Ordering::Relaxed);
    }

    /// The text (bytes that are not UTF-8, which only a corrupt row has, become U+FFFD).
    fn load(&self) -> String {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(Self::CAPACITY);
        let mut b = Vec::with_capacity(len.next_multiple_of(8));
        for w in &self.words {
            if b.len() >= len {
                break;
            }
            b.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        b.truncate(len);
        String::from_utf8_lossy(&b).into_owned()
    }
}

/// Starts rewriting a row's text (see the module's table).
fn write_begin(seq: &AtomicU64) -> u64 {
    let odd = seq.load(Ordering::Relaxed) | 1;
    seq.store(odd, Ordering::Relaxed);
    // ORDERING: the odd mark is ordered before every text store that follows: a reader that
    // sees any new text (and then runs its Acquire fence) sees `seq` moved from its first read.
    fence(Ordering::Release);
    odd
}

fn write_end(seq: &AtomicU64, odd: u64) {
    // ORDERING: Release pairs with the reader's Acquire load: a reader that sees the even
    // value sees all the text stored before it.
    seq.store(odd.wrapping_add(1), Ordering::Release);
}

/// Reads a row's text through its sequence word; `None` if never published, or if it kept
/// changing for [`READ_TRIES`] attempts.
fn read_stable<T>(seq: &AtomicU64, read: impl Fn() -> T) -> Option<T> {
    for _ in 0..READ_TRIES {
        // ORDERING: Acquire pairs with `write_end`'s Release.
        let before = seq.load(Ordering::Acquire);
        if before == 0 {
            return None;
        }
        if before & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let v = read();
        // ORDERING: orders the text loads above before the second read of `seq`; pairs with
        // `write_begin`'s Release fence (a torn read sees `seq` changed).
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) == before {
            return Some(v);
        }
    }
    None
}

macro_rules! row_fields {
    (
        $(#[$meta:meta])* $row:ident, $list:ident,
        { $( $(#[$pmeta:meta])* $pre:ident : $pty:ty ),* $(,)? }
        { $( $kind:ident $name:ident : $help:literal ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        pub struct $row {
            $( $(#[$pmeta])* $pre: $pty, )*
            $( #[doc = $help] pub $name: AtomicU64, )*
        }

        /// The counters and gauges of every row, in layout order.
        pub const $list: &[RowField] = &[ $( RowField {
            name: stringify!($name),
            help: $help,
            kind: FieldKind::$kind,
        } ),* ];

        impl $row {
            /// Current values in the list's order.
            pub fn values(&self) -> Vec<u64> {
                vec![ $( self.$name.load(Ordering::Relaxed) ),* ]
            }
        }
    };
}

row_fields! {
    /// One site: its name and what cached answered for it. Arena hits of the proxy's workers
    /// are not here (they never reach cached): they are the proxy's `arena_hits`.
    SiteRow, SITE_FIELDS,
    {
        /// Sequence word of `name` (module table).
        seq: AtomicU64,
        name: ShmText,
    }
    {
        Counter requests: "Requests cached answered for the site (every outcome)",
        Counter hits: "Answers from the stored copy (HIT)",
        Counter misses: "Answers fetched from an origin server (MISS)",
        Counter passes: "Answers passed through uncached (PASS)",
        Counter stale: "Stale stored answers served (STALE)",
        Counter revalidated: "Stored answers revalidated with a 304 (REVALIDATED)",
        Counter collapsed: "Answers that followed another request's fill (COLLAPSED)",
        Counter errors: "5xx answers cached produced itself (origin unreachable, bad answer, timeout)",
    }
}

row_fields! {
    /// One upstream server of a site: its URL, its state and its traffic.
    ServerRow, SERVER_FIELDS,
    {
        /// Sequence word of `site` and `url` (module table).
        seq: AtomicU64,
        /// Index of its site row.
        site: AtomicU64,
        url: ShmText,
        /// [`ServerState`] as a number.
        state: AtomicU64,
        /// Unix time (s) of the last state change (or of `publish`).
        last_change: AtomicU64,
    }
    {
        Counter requests: "Requests sent to the server (each attempt, retries included)",
        Counter failures: "Attempts that failed before a complete answer (refused, reset, TLS, timeout, bad framing)",
        Counter tls_errors: "TLS handshake or certificate verification failures",
        Counter retries: "Idempotent requests retried elsewhere after a connection to this server failed before any response byte",
        Gauge in_flight: "Requests to the server in progress",
        Counter health_checks: "Active health checks sent",
        Counter health_failures: "Active health checks that failed",
        Counter down_events: "Times the server was taken out of rotation",
    }
}

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for SiteRow {}
// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for ServerRow {}

/// A server's health as cached sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Not published (or not yet).
    Unused = 0,
    /// In rotation.
    Up = 1,
    /// Taken out after `fall` failures, until `rise` successes.
    Down = 2,
}

impl ServerState {
    fn from_u64(v: u64) -> ServerState {
        match v {
            1 => ServerState::Up,
            2 => ServerState::Down,
            _ => ServerState::Unused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Unused => "unused",
            ServerState::Up => "up",
            ServerState::Down => "down",
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SiteRow {
    /// Names the row and makes it visible (once at start; again only from the same thread).
    pub fn publish(&self, name: &str) {
        let odd = write_begin(&self.seq);
        self.name.store(name);
        write_end(&self.seq, odd);
    }

    /// The site's name, if the row is published.
    pub fn name(&self) -> Option<String> {
        read_stable(&self.seq, || self.name.load())
    }

    /// Counts one answer cached wrote for this site: `requests`, its outcome, and `errors`
    /// for a 5xx cached produced itself (outcome `ERROR`).
    pub fn answered(&self, outcome: CacheOutcome, status: u16) {
        value::inc(&self.requests);
        let c = match outcome {
            CacheOutcome::Hit => &self.hits,
            CacheOutcome::Miss => &self.misses,
            CacheOutcome::Pass => &self.passes,
            CacheOutcome::Stale => &self.stale,
            CacheOutcome::Revalidated => &self.revalidated,
            CacheOutcome::Collapsed => &self.collapsed,
            CacheOutcome::Error if status >= 500 => &self.errors,
            CacheOutcome::Error | CacheOutcome::Internal => return,
        };
        value::inc(c);
    }
}

/// One request in progress on a server ([`ServerRow::request`]); dropping it ends it.
#[must_use = "the request is in flight as long as this lives"]
pub struct InFlight<'a>(&'a ServerRow);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        value::dec(&self.0.in_flight);
    }
}

impl InFlight<'_> {
    /// The attempt failed before a complete answer (counts `failures`).
    pub fn failed(&self) {
        value::inc(&self.0.failures);
    }

    /// The attempt failed in its TLS handshake or certificate check (`failures` and
    /// `tls_errors`).
    pub fn tls_failed(&self) {
        self.failed();
        value::inc(&self.0.tls_errors);
    }

    /// The request goes on to a retry after this attempt failed before any response byte
    /// (counts `retries` here; call `failed` or `tls_failed` as well).
    pub fn retrying(&self) {
        value::inc(&self.0.retries);
    }
}

impl ServerRow {
    /// Names the row (its site's row index and URL), marks it up and makes it visible.
    pub fn publish(&self, site: u16, url: &str) {
        let odd = write_begin(&self.seq);
        self.site.store(u64::from(site), Ordering::Relaxed);
        self.url.store(url);
        self.state.store(ServerState::Up as u64, Ordering::Relaxed);
        self.last_change.store(now_unix(), Ordering::Relaxed);
        write_end(&self.seq, odd);
    }

    /// Site index and URL, if the row is published.
    pub fn identity(&self) -> Option<(u16, String)> {
        read_stable(&self.seq, || {
            (
                self.site.load(Ordering::Relaxed).min(u64::from(NO_SITE)) as u16,
                self.url.load(),
            )
        })
    }

    pub fn state(&self) -> ServerState {
        ServerState::from_u64(self.state.load(Ordering::Relaxed))
    }

    /// Unix time (s) of the last state change.
    pub fn last_change(&self) -> u64 {
        self.last_change.load(Ordering::Relaxed)
    }

    /// Puts the server in (`true`) or out of rotation; returns whether the state changed
    /// (then `last_change` is now, and going down counts `down_events`). The caller counts
    /// the global `upstream_server_down_events` when this returns true for `up == false`.
    pub fn set_up(&self, up: bool) -> bool {
        let new = if up {
            ServerState::Up
        } else {
            ServerState::Down
        } as u64;
        if self.state.swap(new, Ordering::Relaxed) == new {
            return false;
        }
        self.last_change.store(now_unix(), Ordering::Relaxed);
        if !up {
            value::inc(&self.down_events);
        }
        true
    }

    /// Starts one attempt: counts `requests` and holds `in_flight` up until the guard drops.
    pub fn request(&self) -> InFlight<'_> {
        value::inc(&self.requests);
        value::inc(&self.in_flight);
        InFlight(self)
    }

    /// Requests in progress (for least-connections balancing, or display).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// One active health check, and its result.
    pub fn health_checked(&self, ok: bool) {
        value::inc(&self.health_checks);
        if !ok {
            value::inc(&self.health_failures);
        }
    }
}

/// The whole table, placed after the counter slots of the cached region.
#[repr(C)]
pub struct Upstreams {
    pub sites: [SiteRow; MAX_SITES],
    pub servers: [ServerRow; MAX_SERVERS],
}

// SAFETY: arrays of ShmSafe rows (only atomics); repr(C); alignment 8.
unsafe impl ShmSafe for Upstreams {}

/// Continues the stats region's layout hash (`STATS_VERSION`) with the tables'
/// layout: row counts, text size, row sizes and both field lists.
pub(super) const fn layout_hash(mut h: u32) -> u32 {
    h = fnv1a_usize(h, MAX_SITES);
    h = fnv1a_usize(h, MAX_SERVERS);
    h = fnv1a_usize(h, TEXT_WORDS);
    h = fnv1a_usize(h, size_of::<SiteRow>());
    h = fnv1a_usize(h, size_of::<ServerRow>());
    h = fnv1a_usize(h, size_of::<Upstreams>());
    h = fnv1a_rows(h, SITE_FIELDS);
    fnv1a_rows(h, SERVER_FIELDS)
}

const fn fnv1a_rows(mut h: u32, list: &[RowField]) -> u32 {
    let mut i = 0;
    while i < list.len() {
        h = fnv1a_field(h, list[i].name, list[i].kind);
        i += 1;
    }
    fnv1a_usize(h, list.len())
}

/// One published site row, read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteView {
    pub index: usize,
    pub name: String,
    /// In [`SITE_FIELDS`] order.
    pub values: Vec<u64>,
}

/// One published server row, read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub index: usize,
    pub site: u16,
    /// Its site's name (empty when that row is not published).
    pub site_name: String,
    pub url: String,
    pub state: ServerState,
    pub last_change: u64,
    /// In [`SERVER_FIELDS`] order.
    pub values: Vec<u64>,
}

impl SiteView {
    pub fn get(&self, name: &str) -> u64 {
        field(SITE_FIELDS, &self.values, name)
    }
}

impl ServerView {
    pub fn get(&self, name: &str) -> u64 {
        field(SERVER_FIELDS, &self.values, name)
    }
}

fn field(list: &[RowField], values: &[u64], name: &str) -> u64 {
    list.iter()
        .position(|f| f.name == name)
        .and_then(|i| values.get(i).copied())
        .unwrap_or(0)
}

impl Upstreams {
    /// Every published site row.
    pub fn read_sites(&self) -> Vec<SiteView> {
        self.sites
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                Some(SiteView {
                    index,
                    name: r.name()?,
                    values: r.values(),
                })
            })
            .collect()
    }

    /// Every published server row, with its site's name from `sites`.
    pub fn read_servers(&self, sites: &[SiteView]) -> Vec<ServerView> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                let (site, url) = r.identity()?;
                Some(ServerView {
                    index,
                    site,
                    site_name: sites
                        .iter()
                        .find(|s| s.index == usize::from(site))
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    url,
                    state: r.state(),
                    last_change: r.last_change(),
                    values: r.values(),
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (called by `View::json` and `View::prometheus`).
// ---------------------------------------------------------------------------------------------

/// A row as a JSON object: `head` (its identity), then its counters in list order.
fn row_json(head: Vec<(&str, Value)>, list: &[RowField], values: &[u64]) -> Value {
    let mut m: Map<String, Value> = head.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for (f, &v) in list.iter().zip(values) {
        m.insert(f.name.to_string(), json_value(f.kind, v));
    }
    Value::Object(m)
}

/// The `sites` array of the stats JSON (empty without cached or in disk mode).
pub(super) fn sites_json(sites: &[SiteView]) -> Value {
    sites
        .iter()
        .map(|s| {
            let head = vec![("index", s.index.into()), ("name", s.name.clone().into())];
            row_json(head, SITE_FIELDS, &s.values)
        })
        .collect()
}

/// The `servers` array of the stats JSON.
pub(super) fn servers_json(servers: &[ServerView]) -> Value {
    servers
        .iter()
        .map(|s| {
            let head = vec![
                ("index", s.index.into()),
                ("site", s.site_name.clone().into()),
                ("site_index", s.site.into()),
                ("url", s.url.clone().into()),
                ("state", s.state.as_str().into()),
                ("last_change", s.last_change.into()),
            ];
            row_json(head, SERVER_FIELDS, &s.values)
        })
        .collect()
}

/// Label sets, one per row, all different: a row whose set repeats an earlier one (the same
/// name twice) gets `#<row index>` appended to its last label value.
fn unique_labels(rows: impl Iterator<Item = (usize, Vec<(&'static str, String)>)>) -> Vec<String> {
    let render = |pairs: &[(&str, String)], suffix: &str| {
        let n = pairs.len();
        pairs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let tail = if i + 1 == n { suffix } else { "" };
                format!("{k}=\"{}{tail}\"", prom_label(v))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out: Vec<String> = Vec::new();
    for (index, pairs) in rows {
        let mut l = render(&pairs, "");
        if out.contains(&l) {
            l = render(&pairs, &format!("#{index}"));
        }
        out.push(l);
    }
    out
}

fn family(out: &mut String, name: &str, kind: FieldKind, help: &str) {
    let kind = match kind {
        FieldKind::Counter => "counter",
        FieldKind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {}", prom_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn metric(prefix: &str, f: &RowField) -> String {
    match f.kind {
        FieldKind::Counter => format!("{prefix}_{}_total", f.name),
        FieldKind::Gauge => format!("{prefix}_{}", f.name),
    }
}

fn sample(out: &mut String, name: &str, labels: &str, kind: FieldKind, v: u64) {
    let _ = match kind {
        FieldKind::Counter => writeln!(out, "{name}{{{labels}}} {v}"),
        FieldKind::Gauge => writeln!(out, "{name}{{{labels}}} {}", v as i64),
    };
}

/// `shmproxy_site_*{site}` and `shmproxy_upstream_*{site,server}` families (none when the
/// tables are empty).
pub(super) fn tables_prometheus(out: &mut String, sites: &[SiteView], servers: &[ServerView]) {
    if !sites.is_empty() {
        let labels = unique_labels(
            sites
                .iter()
                .map(|s| (s.index, vec![("site", s.name.clone())])),
        );
        for (j, f) in SITE_FIELDS.iter().enumerate() {
            let name = metric("shmproxy_site", f);
            family(out, &name, f.kind, &format!("Per site: {}", f.help));
            for (s, l) in sites.iter().zip(&labels) {
                sample(out, &name, l, f.kind, s.values[j]);
            }
        }
    }
    if servers.is_empty() {
        return;
    }
    let labels = unique_labels(servers.iter().map(|s| {
        (
            s.index,
            vec![("site", s.site_name.clone()), ("server", s.url.clone())],
        )
    }));
    let name = "shmproxy_upstream_up";
    family(
        out,
        name,
        FieldKind::Gauge,
        "1 while the upstream server is in rotation, 0 while it is taken out (failures or health checks)",
    );
    for (s, l) in servers.iter().zip(&labels) {
        let up = u64::from(s.state != ServerState::Down);
        sample(out, name, l, FieldKind::Gauge, up);
    }
    let name = "shmproxy_upstream_last_change_timestamp_seconds";
    family(
        out,
        name,
        FieldKind::Gauge,
        "Unix time of the upstream server's last state change (or of cached's start)",
    );
    for (s, l) in servers.iter().zip(&labels) {
        sample(out, name, l, FieldKind::Gauge, s.last_change);
    }
    for (j, f) in SERVER_FIELDS.iter().enumerate() {
        let name = metric("shmproxy_upstream", f);
        family(
            out,
            &name,
            f.kind,
            &format!("Per upstream server: {}", f.help),
        );
        for (s, l) in servers.iter().zip(&labels) {
            sample(out, &name, l, f.kind, s.values[j]);
        }
    }
}

/// The README table's rows for the sites and servers tables.
pub(super) fn markdown_rows(out: &mut String) {
    let kind = |k: FieldKind| match k {
        FieldKind::Counter => "counter",
        FieldKind::Gauge => "gauge",
    };
    for f in SITE_FIELDS {
        let _ = writeln!(
            out,
            "| `sites[].{}` | cached | {} | `{}{{site}}` | Per site: {} |",
            f.name,
            kind(f.kind),
            metric("shmproxy_site", f),
            f.help
        );
    }
    out.push_str("| `servers[].state` | cached | gauge | `shmproxy_upstream_up{site,server}` | Per upstream server: `up` (1) or `down` (0, out of rotation) |\n");
    out.push_str("| `servers[].last_change` | cached | gauge | `shmproxy_upstream_last_change_timestamp_seconds{site,server}` | Per upstream server: Unix time of its last state change |\n");
    for f in SERVER_FIELDS {
        let _ = writeln!(
            out,
            "| `servers[].{}` | cached | {} | `{}{{site,server}}` | Per upstream server: {} |",
            f.name,
            kind(f.kind),
            metric("shmproxy_upstream", f),
            f.help
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::StatsRegion;
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn row_layout_is_pinned() {
        assert_eq!(offset_of!(ShmText, len), 0);
        assert_eq!(offset_of!(ShmText, words), 8);
        assert_eq!(size_of::<ShmText>(), 136);
        assert_eq!(offset_of!(SiteRow, seq), 0);
        assert_eq!(offset_of!(SiteRow, name), 8);
        assert_eq!(offset_of!(SiteRow, requests), 144);
        assert_eq!(offset_of!(SiteRow, errors), 200);
        assert_eq!(size_of::<SiteRow>(), 208);
        assert_eq!(offset_of!(ServerRow, seq), 0);
        assert_eq!(offset_of!(ServerRow, site), 8);
        assert_eq!(offset_of!(ServerRow, url), 16);
        assert_eq!(offset_of!(ServerRow, state), 152);
        assert_eq!(offset_of!(ServerRow, last_change), 160);
        assert_eq!(offset_of!(ServerRow, requests), 168);
        assert_eq!(offset_of!(ServerRow, in_flight), 200);
        assert_eq!(offset_of!(ServerRow, down_events), 224);
        assert_eq!(size_of::<ServerRow>(), 232);
        assert_eq!(offset_of!(Upstreams, sites), 0);
        assert_eq!(offset_of!(Upstreams, servers), MAX_SITES * 208);
        assert_eq!(size_of::<Upstreams>(), MAX_SITES * 208 + MAX_SERVERS * 232);
        assert_eq!(align_of::<Upstreams>(), 8);
        // The generated lists follow the layout.
        assert_eq!(SITE_FIELDS.len(), (208 - 144) / 8);
        assert_eq!(SERVER_FIELDS.len(), (232 - 168) / 8);
        assert_eq!(SERVER_FIELDS[4].name, "in_flight");
        assert_eq!(SERVER_FIELDS[4].kind, FieldKind::Gauge);
    }

    /// The tables' field lists move the region's version as the slot's list does.
    #[test]
    fn table_lists_move_the_version() {
        let base = fnv1a_rows(1, SERVER_FIELDS);
        let renamed: Vec<RowField> = SERVER_FIELDS
            .iter()
            .map(|f| RowField {
                name: if f.name == "retries" {
                    "retried"
                } else {
                    f.name
                },
                help: f.help,
                kind: f.kind,
            })
            .collect();
        assert_ne!(fnv1a_rows(1, &renamed), base);
        assert_ne!(fnv1a_rows(1, &renamed[1..]), base);
        assert_ne!(fnv1a_rows(1, SITE_FIELDS), base);
        assert_ne!(layout_hash(1), layout_hash(2));
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let name = format!("/stattab1-{}", std::process::id());
        let r = StatsRegion::create_with_tables(&name, 1).unwrap();
        let row = r.site(0).unwrap();
        assert_eq!(row.name(), None, "unpublished");
        row.publish("www.example.com");
        assert_eq!(row.name().as_deref(), Some("www.example.com"));
        row.publish("");
        assert_eq!(row.name().as_deref(), Some(""), "published, empty");
        let long = format!("{}é", "a".repeat(ShmText::CAPACITY - 1));
        row.publish(&long);
        assert_eq!(row.name().unwrap(), "a".repeat(ShmText::CAPACITY - 1));
        let exact = "b".repeat(ShmText::CAPACITY);
        row.publish(&exact);
        assert_eq!(row.name().unwrap(), exact);
        assert!(r.site(MAX_SITES).is_none());
        assert!(r.server(MAX_SERVERS).is_none());
        assert_eq!(r.site_name(NO_SITE), None);
        let plain = StatsRegion::create(&format!("/stattab2-{}", std::process::id()), 1).unwrap();
        assert!(plain.site(0).is_none() && plain.upstreams().is_none());
    }

    /// Another mapping (as the proxy's) sees what cached published, and the counters.
    #[test]
    fn rows_written_in_one_mapping_are_read_in_another() {
        let name = format!("/stattab3-{}", std::process::id());
        let w = StatsRegion::create_with_tables(&name, 1).unwrap();
        w.site(0).unwrap().publish("shop");
        w.site(2).unwrap().publish("blog");
        w.server(0).unwrap().publish(0, "https://10.0.0.1:443");
        w.server(1).unwrap().publish(0, "https://10.0.0.2:8443");
        w.server(5).unwrap().publish(2, "http://[::1]:8080/blog");
        let s0 = w.site(0).unwrap();
        s0.answered(CacheOutcome::Hit, 200);
        s0.answered(CacheOutcome::Miss, 200);
        s0.answered(CacheOutcome::Error, 502);
        s0.answered(CacheOutcome::Error, 404);
        w.site_answered(NO_SITE, CacheOutcome::Hit, 200); // no row: ignored
        w.site_answered(MAX_SITES as u16, CacheOutcome::Hit, 200);
        w.site_answered(2, CacheOutcome::Pass, 200);
        let a = w.server(1).unwrap();
        {
            let attempt = a.request();
            assert_eq!(a.in_flight(), 1);
            attempt.tls_failed();
            attempt.retrying();
        }
        assert_eq!(a.in_flight(), 0);
        a.health_checked(false);
        assert!(a.set_up(false));
        assert!(!a.set_up(false), "no change");

        let r = StatsRegion::open(&name).unwrap();
        let t = r.upstreams().expect("cached's region has the table");
        let sites = t.read_sites();
        assert_eq!(
            sites
                .iter()
                .map(|s| (s.index, s.name.as_str()))
                .collect::<Vec<_>>(),
            [(0, "shop"), (2, "blog")]
        );
        assert_eq!(sites[0].get("requests"), 4);
        assert_eq!(sites[0].get("hits"), 1);
        assert_eq!(sites[0].get("misses"), 1);
        assert_eq!(sites[0].get("errors"), 1, "only a 5xx cached produced");
        assert_eq!(r.site_name(2).as_deref(), Some("blog"));
        assert_eq!((sites[1].get("requests"), sites[1].get("passes")), (1, 1));
        assert_eq!(r.site_name(1), None);
        let servers = t.read_servers(&sites);
        assert_eq!(servers.len(), 3);
        let b = &servers[1];
        assert_eq!((b.index, b.site, b.site_name.as_str()), (1, 0, "shop"));
        assert_eq!(b.url, "https://10.0.0.2:8443");
        assert_eq!(b.state, ServerState::Down);
        assert!(b.last_change > 1_600_000_000);
        assert_eq!(
            (b.get("requests"), b.get("failures"), b.get("retries")),
            (1, 1, 1)
        );
        assert_eq!(b.get("tls_errors"), 1);
        assert_eq!(
            (
                b.get("health_checks"),
                b.get("health_failures"),
                b.get("down_events")
            ),
            (1, 1, 1)
        );
        assert_eq!(servers[0].state, ServerState::Up);
        assert_eq!(
            (servers[2].index, servers[2].site_name.as_str()),
            (5, "blog")
        );

        let json = format!("{},{}", sites_json(&sites), servers_json(&servers));
        assert!(
            json.starts_with("[{\"index\":0,\"name\":\"shop\",\"requests\":4,\"hits\":1,"),
            "{json}"
        );
        assert!(json.contains(
            "{\"index\":1,\"site\":\"shop\",\"site_index\":0,\"url\":\"https://10.0.0.2:8443\",\"state\":\"down\",\"last_change\":"
        ));
        assert!(json.contains("\"in_flight\":0,"));
        let mut prom = String::new();
        tables_prometheus(&mut prom, &sites, &servers);
        assert!(prom.contains("shmproxy_site_requests_total{site=\"shop\"} 4\n"));
        assert!(prom
            .contains("shmproxy_upstream_up{site=\"shop\",server=\"https://10.0.0.2:8443\"} 0\n"));
        assert!(prom
            .contains("shmproxy_upstream_up{site=\"blog\",server=\"http://[::1]:8080/blog\"} 1\n"));
        assert!(prom.contains(
            "shmproxy_upstream_retries_total{site=\"shop\",server=\"https://10.0.0.2:8443\"} 1\n"
        ));
        assert!(prom.contains("# TYPE shmproxy_upstream_in_flight gauge\n"));
    }

    #[test]
    fn repeated_names_get_distinct_label_sets() {
        let servers: Vec<ServerView> = [3, 7]
            .into_iter()
            .map(|index| ServerView {
                index,
                site: 0,
                site_name: "s\"1\\".into(),
                url: "http://a\n".into(),
                state: ServerState::Up,
                last_change: 5,
                values: vec![0; SERVER_FIELDS.len()],
            })
            .collect();
        let mut prom = String::new();
        tables_prometheus(&mut prom, &[], &servers);
        assert!(
            prom.contains("shmproxy_upstream_up{site=\"s\\\"1\\\\\",server=\"http://a\\n\"} 1\n")
        );
        assert!(
            prom.contains("shmproxy_upstream_up{site=\"s\\\"1\\\\\",server=\"http://a\\n#7\"} 1\n")
        );
        assert!(
            !prom.contains("shmproxy_site_"),
            "no site rows, no site families"
        );
        let mut empty = String::new();
        tables_prometheus(&mut empty, &[], &[]);
        assert_eq!(empty, "");
    }

    /// A reader racing a writer that republishes sees one whole name or the other, never a mix.
    #[test]
    fn republished_text_is_never_torn() {
        let name = format!("/stattab4-{}", std::process::id());
        let r = StatsRegion::create_with_tables(&name, 1).unwrap();
        let (a, b) = (
            "a".repeat(ShmText::CAPACITY),
            "b".repeat(ShmText::CAPACITY / 2 + 3),
        );
        let row = r.site(0).unwrap();
        row.publish(&a);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in 0..20_000 {
                    row.publish(if i % 2 == 0 { &b } else { &a });
                }
                stop.store(true, Ordering::Relaxed);
            });
            loop {
                let done = stop.load(Ordering::Relaxed);
                let n = row.name();
                if let Some(n) = &n {
                    assert!(*n == a || *n == b, "torn name {n:?}");
                }
                if done {
                    // The writer has finished: its last name (`a`), read whole.
                    assert_eq!(n.as_ref(), Some(&a));
                    break;
                }
            }
        });
    }
}

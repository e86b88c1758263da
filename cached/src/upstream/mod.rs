//! The origin servers of every site. Each server has its own pooled `ureq` agent (plain or
//! TLS; no default features: nothing decompresses or rewrites bodies, HTTP error statuses
//! are answers, no redirect is followed, every timeout and the pool size are set).
//!
//! Per request, the site's balance rule picks a live server ([`balance`]); a server is taken
//! out after `fall` failed connections or health checks and comes back after `rise` good
//! checks ([`health`]). When every server of a site is out, they are all tried anyway: a
//! server that came back serves at once, and a dead site costs a fast 502, not a hang.
//!
//! Keep-alive never turns an origin's idle close into an error (RFC 9112 §9.3.1): idle
//! connections retire after `cached.upstream_idle_ms` or before the origin's advertised
//! `Keep-Alive: timeout=`, whichever is shorter, and an idempotent request without a body
//! whose connection fails before any answer byte is sent once more — on another live
//! server when the site has one, else on a fresh connection to the same server.

mod balance;
pub mod health;
mod interim;
mod tls;

use crate::error::SourceError;
use common::config::{CachedConfig, Health, HostHeader, Origin, Scheme, Site};
use common::stats::upstream::{InFlight, ServerRow};
use common::stats::{Counters, StatsRegion};
use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};
use ureq::http;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    ConnectionDetails, Connector, NextTimeout, RustlsConnector, TcpConnector, Transport,
};

/// Checks of servers without a `health` table (only a server taken out is probed, by
/// connecting to it): HAProxy's defaults.
pub static PASSIVE: Health = Health {
    path: String::new(),
    interval: Duration::from_secs(2),
    timeout: Duration::from_secs(1),
    rise: 2,
    fall: 3,
};

/// Every site's servers, in the order of `cfg.sites`.
pub struct Upstreams {
    sites: Vec<SiteUp>,
}

impl Upstreams {
    /// What `cached --check` verifies of the sites without starting anything: the trust
    /// store loads when a server is `https://`.
    pub fn check(cfg: &CachedConfig) -> anyhow::Result<()> {
        Self::trust(cfg).map(drop)
    }

    /// The trust anchors, loaded once, when any server is `https://`.
    fn trust(cfg: &CachedConfig) -> anyhow::Result<Option<tls::Trust>> {
        let needs_tls = cfg
            .sites
            .iter()
            .flat_map(|s| &s.origins)
            .any(|o| o.scheme == Scheme::Https);
        match needs_tls {
            true => Ok(Some(tls::Trust::load(cfg.tls_ca_file.as_deref())?)),
            false => Ok(None),
        }
    }

    /// The servers of every site, each named in its row of `stats`' tables (sites and
    /// servers past the tables' size work, unlisted).
    pub fn new(cfg: &CachedConfig, stats: &Arc<StatsRegion>) -> anyhow::Result<Upstreams> {
        let trust = Self::trust(cfg)?;
        let mut row = 0;
        let mut sites = Vec::with_capacity(cfg.sites.len());
        for (index, site) in cfg.sites.iter().enumerate() {
            let index = index.min(usize::from(u16::MAX - 1)) as u16;
            if let Some(r) = stats.site(usize::from(index)) {
                r.publish(&site.name);
            }
            let mut servers = Vec::with_capacity(site.origins.len());
            for o in &site.origins {
                let server = Server::new(cfg, site, o, trust.as_ref(), row, stats);
                if let Some(r) = stats.server(row) {
                    r.publish(index, &server.url);
                }
                servers.push(server);
                row += 1;
            }
            sites.push(SiteUp {
                site: site.clone(),
                index,
                servers,
                next: AtomicUsize::new(0),
                stats: Arc::clone(stats),
                node: cfg.node.clone(),
            });
        }
        Ok(Upstreams { sites })
    }

    pub fn site(&self, index: usize) -> &SiteUp {
        &self.sites[index]
    }

    pub fn sites(&self) -> &[SiteUp] {
        &self.sites
    }
}

/// One site's servers and its rotation.
pub struct SiteUp {
    pub site: Site,
    /// Its row in the stats region's site table (and in `cfg.sites`).
    pub index: u16,
    pub servers: Vec<Server>,
    /// Round-robin position (also breaks least-connections ties).
    next: AtomicUsize,
    stats: Arc<StatsRegion>,
    /// This node's name, for the `Via` sent to the servers.
    pub node: String,
}

/// One origin server of a site.
pub struct Server {
    pub origin: Origin,
    /// What logs and stats call it: `scheme://host:port/prefix`.
    pub url: String,
    /// Where requests go: the URL with the verified name in place of the host when the
    /// site sets `tls_server_name` (the resolver still connects to the host).
    base: String,
    /// The `Host` an `host_header = "origin"` site sends.
    authority: String,
    make: AgentSpec,
    /// The pooled agent; replaced (its idle connections dropped) when the origin advertises
    /// a keep-alive timeout shorter than the idle age it was built with.
    agent: RwLock<ureq::Agent>,
    /// Idle age of `agent`, ms.
    idle_ms: AtomicU64,
    /// An agent that keeps no connection: a retry's connection is always new.
    fresh: ureq::Agent,
    up: AtomicBool,
    /// Consecutive failures while up, consecutive successes while down.
    streak: AtomicU32,
    /// Requests in flight (least-connections), also shown in the stats row.
    pub in_flight: AtomicU64,
    /// Its row in the stats region's server table.
    row: usize,
}

/// Bytes of the buffer an upstream answer is read through, for each connection (pooled ones
/// keep theirs): room for an answer's head up to ureq's limit on it (64 KiB), and the size of
/// the pieces a fill copies on. ureq's own default, 128 KiB for reading and as much for
/// sending, kept 16 MiB resident for a pool of 64 idle connections.
const RECV_BUFFER: usize = 64 << 10;

/// Bytes of the buffer a request head is sent through: the longest head the proxy forwards
/// (so its longest field line fits, which ureq requires), and room for the fields cached
/// adds (`Via`, `X-Forwarded-*`); at least 16 KiB, which also carries request bodies.
fn send_buffer(max_header_bytes: usize) -> usize {
    (max_header_bytes + (4 << 10)).max(16 << 10)
}

/// What an agent of this server is made from.
struct AgentSpec {
    connect_timeout: Duration,
    read_timeout: Duration,
    pool: usize,
    /// Bytes of the buffer a request head is written through: its longest line must fit.
    send_buffer: usize,
    tls: Option<ureq::tls::TlsConfig>,
    /// The real host to connect to when `base` names another (tls_server_name).
    pinned: Option<http::Uri>,
    /// cached's stats region (interim answers are counted where they are read).
    stats: Arc<StatsRegion>,
}

impl AgentSpec {
    /// An agent for health checks: no pool, every timeout `timeout`.
    fn probe(&self, timeout: Duration) -> ureq::Agent {
        AgentSpec {
            connect_timeout: timeout.min(self.connect_timeout),
            read_timeout: timeout,
            pool: 0,
            send_buffer: self.send_buffer,
            tls: self.tls.clone(),
            pinned: self.pinned.clone(),
            stats: Arc::clone(&self.stats),
        }
        .build(None)
    }

    fn build(&self, idle: Option<Duration>) -> ureq::Agent {
        let pool = if idle.is_some() { self.pool } else { 0 };
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .allow_non_standard_methods(true)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .timeout_connect(Some(self.connect_timeout))
            .timeout_send_request(Some(self.read_timeout))
            .timeout_send_body(Some(self.read_timeout))
            .timeout_recv_response(Some(self.read_timeout))
            .timeout_per_read(Some(self.read_timeout))
            .timeout_global(None)
            .timeout_recv_body(None)
            .input_buffer_size(RECV_BUFFER)
            .output_buffer_size(self.send_buffer)
            .max_idle_connections(pool)
            .max_idle_connections_per_host(pool)
            .max_idle_age(idle.unwrap_or(Duration::ZERO))
            .no_delay(true);
        if let Some(tls) = &self.tls {
            b = b.tls_config(tls.clone());
        }
        let config = b.build();
        let connector =
            ().chain(TcpConnector::default())
                .chain(Mark(Stage::Connected))
                .chain(RustlsConnector::default())
                .chain(Mark(Stage::Ready))
                .chain(interim::Interim {
                    stats: Arc::clone(&self.stats),
                });
        match &self.pinned {
            Some(real) => ureq::Agent::with_parts(config, connector, Pinned(real.clone())),
            None => ureq::Agent::with_parts(config, connector, DefaultResolver::default()),
        }
    }
}

/// How far the connection of this thread's current attempt got: ureq connects on the
/// calling thread, and [`Mark`] connectors between the TCP and TLS layers record it. An
/// attempt that made no new connection reused a pooled one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// No new connection (yet): a pooled one, or the TCP connect failed.
    None,
    /// TCP is up; TLS (for https) has not finished its handshake.
    Connected,
    /// A new connection is ready for the request.
    Ready,
}

thread_local! {
    static STAGE: Cell<Stage> = const { Cell::new(Stage::None) };
}

/// Passes the transport on and records that the connection got this far.
#[derive(Debug)]
struct Mark(Stage);

impl<In: Transport> Connector<In> for Mark {
    type Out = In;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<In>, ureq::Error> {
        if chained.is_some() {
            STAGE.with(|s| s.set(self.0));
        }
        Ok(chained)
    }
}

/// Resolves every request to the configured server, whatever name its URL carries (so
/// the URL can carry the name TLS verifies and sends as SNI).
#[derive(Debug)]
struct Pinned(http::Uri);

impl Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        DefaultResolver::default().resolve(&self.0, config, timeout)
    }
}

impl Server {
    fn new(
        cfg: &CachedConfig,
        site: &Site,
        o: &Origin,
        trust: Option<&tls::Trust>,
        row: usize,
        stats: &Arc<StatsRegion>,
    ) -> Server {
        let tls = match o.scheme {
            Scheme::Https => trust.map(|t| t.config(site.tls_verify)),
            Scheme::Http => None,
        };
        let url = o.to_string();
        let (base, pinned) = match (&site.tls_server_name, o.scheme) {
            (Some(name), Scheme::Https) => (
                format!("https://{name}:{}{}", o.port, o.prefix),
                o.base_url().parse::<http::Uri>().ok(),
            ),
            _ => (url.clone(), None),
        };
        let authority = o.host_header();
        let make = AgentSpec {
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            pool: cfg.upstream_pool,
            send_buffer: send_buffer(cfg.max_header_bytes),
            tls,
            pinned,
            stats: Arc::clone(stats),
        };
        let idle = cfg.upstream_idle;
        Server {
            origin: o.clone(),
            url,
            base,
            authority,
            agent: RwLock::new(make.build(Some(idle))),
            idle_ms: AtomicU64::new(idle.as_millis() as u64),
            fresh: make.build(None),
            make,
            up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            in_flight: AtomicU64::new(0),
            row,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn agent(&self) -> ureq::Agent {
        self.agent.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The origin said `Keep-Alive: timeout=SECS`: idle connections retire a margin before
    /// it (a quarter of it, at most a second), if that is sooner than now.
    fn advertised_keep_alive(&self, secs: u64) {
        let full = secs.saturating_mul(1000);
        let idle = full - (full / 4).min(1000);
        if idle < self.idle_ms.load(Ordering::Relaxed) {
            let mut agent = self.agent.write().unwrap_or_else(|e| e.into_inner());
            if idle < self.idle_ms.load(Ordering::Relaxed) {
                *agent = self.make.build(Some(Duration::from_millis(idle)));
                self.idle_ms.store(idle, Ordering::Relaxed);
                log::info!(
                    "origin {} keeps idle connections {secs} s: reusing them for {idle} ms at most",
                    self.url
                );
            }
        }
    }

    /// A connection or check failed: out after `fall` in a row. True when it went out.
    fn failed(&self, rules: &Health, why: &str) -> bool {
        if !self.is_up() {
            self.streak.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n < rules.fall || !self.up.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.streak.store(0, Ordering::Relaxed);
        log::warn!("origin {} is down after {n} failures ({why})", self.url);
        true
    }

    /// A connection or check succeeded: back after `rise` in a row. True when it came back.
    fn succeeded(&self, rules: &Health) -> bool {
        if self.is_up() {
            self.streak.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n < rules.rise || self.up.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.streak.store(0, Ordering::Relaxed);
        log::info!("origin {} is up again after {n} good checks", self.url);
        true
    }
}

/// A request to send upstream, ready but for the server.
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// Origin-form target.
    pub target: &'a str,
    /// End-to-end fields (no Host: it follows the site's `host_header`).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's `Host` (normalised).
    pub client_host: &'a [u8],
    /// Picks the server under `balance = "uri-hash"`.
    pub key: &'a str,
}

/// The body of a request that has one, read as it is sent (never retried).
pub struct SendBody<'b> {
    pub reader: &'b mut dyn io::Read,
    pub len: Option<u64>,
}

/// An origin's answer.
pub struct Answer<'s> {
    pub response: http::Response<ureq::Body>,
    /// When the request went out (RFC 9111 §4.2.3).
    pub request_time: SystemTime,
    /// Keep while the body is read: the server counts the request in flight until then.
    pub busy: Busy<'s>,
    /// The site's row (for the answer's `Meta`).
    pub site: u16,
}

/// A request in flight on a server (least-connections and its stats row count these).
pub struct Busy<'s> {
    server: &'s Server,
    row: Option<InFlight<'s>>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a failed exchange with a server was, classified by the error's type and kind
/// (never its message).
pub fn failure(e: ureq::Error) -> SourceError {
    if let Some(why) = tls::tls_failure(&e) {
        return SourceError::Tls(why);
    }
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            SourceError::Connect(format!("connect timed out ({e})"))
        }
        ureq::Error::Timeout(_) => SourceError::Timeout(e.to_string()),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
            SourceError::Connect(e.to_string())
        }
        ureq::Error::Io(io) => match io.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                SourceError::Timeout(io.to_string())
            }
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable => SourceError::Connect(io.to_string()),
            _ => SourceError::Io(io.to_string()),
        },
        other => SourceError::Protocol(other.to_string()),
    }
}

/// RFC 9110 §9.2.2: a request the client may expect to be sent more than once.
fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

impl SiteUp {
    fn rules(&self) -> &Health {
        self.site.health.as_ref().unwrap_or(&PASSIVE)
    }

    fn row(&self, server: usize) -> Option<&ServerRow> {
        self.stats.server(self.servers[server].row)
    }

    /// A failed connection or health check of server `i` (out after `fall`).
    fn server_failed(&self, i: usize, why: &str) {
        if self.servers[i].failed(self.rules(), why) && self.row(i).is_some_and(|r| r.set_up(false))
        {
            Counters::inc(&self.stats.slot(0).upstream_server_down_events);
        }
    }

    /// A good connection or health check of server `i` (back after `rise`).
    fn server_succeeded(&self, i: usize) {
        if self.servers[i].succeeded(self.rules()) {
            if let Some(r) = self.row(i) {
                r.set_up(true);
            }
        }
    }

    /// Sends `out` to a server of this site, retrying once as the module doc says.
    pub fn send(&self, out: &Outgoing, body: Option<SendBody>) -> Result<Answer<'_>, SourceError> {
        let counters = self.stats.slot(0);
        let first = self.pick(out.key, None);
        let retriable = body.is_none() && idempotent(out.method);
        let e = match self.attempt(counters, first, out, body, false) {
            Ok(a) => return Ok(a),
            Err(e) => e,
        };
        let other = self.pick(out.key, Some(first));
        let again = match (&e, other != first) {
            _ if !retriable => None,
            // Another server may do better; the same one would fail the same way.
            (SourceError::Connect(_) | SourceError::Tls(_), true) => Some((other, false)),
            // The connection died under the request: a reused one the origin had just
            // closed, or a server that is going away.
            (SourceError::Io(_), true) => Some((other, false)),
            (SourceError::Io(_), false) => Some((first, true)),
            _ => None,
        };
        let Some((server, fresh)) = again else {
            return Err(e);
        };
        Counters::inc(&counters.upstream_retries);
        if let Some(r) = self.row(first) {
            Counters::inc(&r.retries);
        }
        log::info!(
            "site {}: {} {} failed on {} ({e}); retrying on {}{}",
            self.site.name,
            out.method,
            out.target,
            self.servers[first].url,
            self.servers[server].url,
            if fresh { " (new connection)" } else { "" }
        );
        self.attempt(counters, server, out, None, fresh)
    }

    fn attempt(
        &self,
        counters: &Counters,
        index: usize,
        out: &Outgoing,
        body: Option<SendBody>,
        fresh: bool,
    ) -> Result<Answer<'_>, SourceError> {
        let server = &self.servers[index];
        let host: &[u8] = match &self.site.host_header {
            HostHeader::Client => out.client_host,
            HostHeader::Origin => server.authority.as_bytes(),
            HostHeader::Name(n) => n.as_bytes(),
        };
        let mut b = http::Request::builder()
            .method(out.method.as_bytes())
            .uri(format!("{}{}", server.base, out.target))
            .header("Host", host);
        for (name, value) in &out.headers {
            b = b.header(name.as_str(), value.as_slice());
        }
        if let Some(SendBody { len: Some(n), .. }) = &body {
            b = b.header("Content-Length", *n);
        }
        Counters::inc(&counters.upstream_requests);
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        let busy = Busy {
            server,
            row: self.row(index).map(ServerRow::request),
        };
        let agent = if fresh {
            server.fresh.clone()
        } else {
            server.agent()
        };
        let started = Instant::now();
        let request_time = SystemTime::now();
        STAGE.with(|s| s.set(Stage::None));
        let result = match body {
            None => b
                .body(())
                .map_err(ureq::Error::Http)
                .and_then(|r| agent.run(r)),
            Some(SendBody { reader, .. }) => b
                .body(ureq::SendBody::from_reader(reader))
                .map_err(ureq::Error::Http)
                .and_then(|r| agent.run(r)),
        };
        Counters::add(
            &counters.upstream_latency_us,
            started.elapsed().as_micros() as u64,
        );
        match result {
            Ok(response) => {
                self.server_succeeded(index);
                if let Some(secs) = keep_alive_timeout(response.headers()) {
                    server.advertised_keep_alive(secs);
                }
                Ok(Answer {
                    response,
                    request_time,
                    busy,
                    site: self.index,
                })
            }
            Err(e) => {
                let stage = STAGE.with(|s| s.get());
                let failure = match (stage, server.origin.scheme) {
                    // TCP was up but the handshake did not finish (a timeout, a close, a
                    // server that does not speak TLS): a TLS failure, whatever the error.
                    (Stage::Connected, Scheme::Https) => match failure(e) {
                        tls @ SourceError::Tls(_) => tls,
                        other => SourceError::Tls(format!("handshake did not complete ({other})")),
                    },
                    _ => failure(e),
                };
                match &failure {
                    SourceError::Tls(_) => {
                        Counters::inc(&counters.upstream_tls_errors);
                        busy.row.as_ref().map(InFlight::tls_failed);
                    }
                    SourceError::Connect(why) => {
                        busy.row.as_ref().map(InFlight::failed);
                        self.server_failed(index, why);
                    }
                    _ => {
                        busy.row.as_ref().map(InFlight::failed);
                    }
                }
                log::warn!(
                    "site {}: origin {}: {} {}: {failure}",
                    self.site.name,
                    server.url,
                    out.method,
                    out.target
                );
                Err(failure)
            }
        }
    }
}

/// `timeout=N` of a `Keep-Alive` field (RFC 2068 §19.7.1, still what servers send).
fn keep_alive_timeout(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get_all("keep-alive")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|param| {
            let param = std::str::from_utf8(param).ok()?.trim();
            let (k, v) = param.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("timeout")
                .then(|| v.trim().parse::<u64>().ok())?
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_parameters() {
        let mut h = http::HeaderMap::new();
        assert_eq!(keep_alive_timeout(&h), None);
        h.insert("keep-alive", "timeout=5, max=100".parse().unwrap());
        assert_eq!(keep_alive_timeout(&h), Some(5));
        h.insert("keep-alive", "max=100,Timeout = 2".parse().unwrap());
        assert_eq!(keep_alive_timeout(&h), Some(2));
        h.insert("keep-alive", "timeout=soon".parse().unwrap());
        assert_eq!(keep_alive_timeout(&h), None);
    }

    #[test]
    fn failures_are_classified() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            failure(ureq::Error::Io(refused)),
            SourceError::Connect(_)
        ));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(
            failure(ureq::Error::Io(reset)),
            SourceError::Io(_)
        ));
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        assert!(matches!(failure(ureq::Error::Io(tls)), SourceError::Tls(_)));
        assert!(matches!(
            failure(ureq::Error::Timeout(ureq::Timeout::RecvResponse)),
            SourceError::Timeout(_)
        ));
    }
}

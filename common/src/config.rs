//! Configuration of both daemons: one TOML file (top-level `instance`, sections `[proxy]` and
//! `[cached]`, and `[[site]]` tables that only cached reads), overridden by command-line
//! flags. A flag's value is read as its key's type says (`--workers four`: "expected an
//! integer"), so a flag and a key share one parser and one set of checks; a repeatable flag
//! (`--origin`, `--listen`) gives a list. [`keys::KEYS`] holds every key's type, range and
//! default; sizes and durations take units (see [`keys`]).
//!
//! Errors name their place and key (`shmproxy.toml:12:12: proxy.segments: must be in
//! 1..=4096 (got 0)`, `command line: --workers: expected an integer, got "four"`);
//! binaries exit with status 2 on them.

mod error;
pub mod keys;
pub mod reload;

pub use error::ConfigError;
use keys::Doc;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An address range (`127.0.0.0/8`, `::1`, `10.1.2.3`), for access lists: an
/// [`ipnet::IpNet`], a bare address being its own `/32` or `/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet(pub ipnet::IpNet);

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        if let Ok(addr) = s.parse::<std::net::IpAddr>() {
            return Ok(IpNet(addr.into()));
        }
        let Some((a, _)) = s.split_once('/') else {
            return Err(format!("not an address or CIDR range: {s:?}"));
        };
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("not an address or CIDR range: {s:?}"));
        }
        s.parse::<ipnet::IpNet>()
            .map(IpNet)
            .map_err(|_| format!("bad prefix length in {s:?}"))
    }

    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// The proxy's settings (master and workers).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub instance: String,
    /// This pair's name in a cluster (`Via`, `X-Served-By`, `Cache-Status`, stats, access
    /// log); default: the host name.
    pub node: String,
    /// Addresses to listen on (at least one; the master binds each).
    pub listen: Vec<SocketAddr>,
    /// Worker processes.
    pub workers: u32,
    /// Request-executing threads per worker.
    pub threads: u32,
    /// Of those, how many take readiness events at once (the others wait their turn or
    /// wait on cached or slow clients).
    pub pollers: u32,
    /// Under a burst of new connections, how long the master lets it gather before it
    /// accepts (zero: never waits).
    pub accept_coalesce: Duration,
    /// Segments in the shared pool.
    pub segments: u32,
    /// Bytes per segment.
    pub segment_size: usize,
    /// Chunk slots per segment (the handoff's bounded buffer).
    pub chunk_slots: u32,
    /// Longest wait for a free segment before answering 503.
    pub pool_wait: Duration,
    /// Time a client has to send a complete request head (slowloris: 408).
    pub header_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// Longest wait for a client to accept more response bytes, or to send body bytes.
    pub send_timeout: Duration,
    /// Least rate (bytes/s) at which a client must take an answer: the time a request spends
    /// waiting for its client to read is bounded by `min_rate_grace + bytes taken / rate`
    /// (0: no bound but `send_timeout` per wait).
    pub min_send_rate: u64,
    /// Least rate (bytes/s) at which a client must send a request body, bounded the same way.
    pub min_recv_rate: u64,
    /// The time a request may wait for its client before the minimum rates count.
    pub min_rate_grace: Duration,
    /// Exec threads of a worker that may wait on slow clients at once (a wait counts as slow
    /// once its request has waited `conn::SLOW_AFTER` on its client); past it, a slow
    /// upload gets 503, a slow download is closed. The rest stay free for other requests.
    pub client_wait_threads: u32,
    /// Longest wait for `cached`'s next chunk.
    pub cached_timeout: Duration,
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// Most request header fields (431 above).
    pub max_headers: usize,
    /// Largest request body (413 above).
    pub max_body_bytes: u64,
    /// Most open client connections per worker.
    pub max_connections: usize,
    /// Access log file; `None` (key absent or "") writes none. Relative paths start at the
    /// working directory.
    pub access_log: Option<PathBuf>,
    /// What a line of the access log holds (default: Combined Log Format).
    pub access_log_format: LogFormat,
    /// The access log is rotated when it reaches this many bytes (0, the default: never;
    /// logrotate with SIGUSR1 does it).
    pub access_log_max_bytes: u64,
    /// Rotated access logs kept: `FILE.1` (newest) … `FILE.N`.
    pub access_log_keep: u32,
    /// Clients allowed to read `/__shmproxy/` (stats, metrics, dashboard); loopback by default.
    pub stats_allow: Vec<IpNet>,
    /// Front ends whose `X-Forwarded-*`/`Forwarded` fields are passed on; from any other
    /// client they are dropped (the origin gets shmproxy's own). Empty by default.
    pub trusted_proxies: Vec<IpNet>,
    /// How long a stopping proxy keeps serving while `/__shmproxy/health` answers 503, so a
    /// load balancer takes it out before it closes its listener (0: stops at once).
    pub drain: Duration,
}

/// `cached`'s settings.
#[derive(Clone, Debug)]
pub struct CachedConfig {
    pub instance: String,
    /// This pair's name in the `Via` sent to the origin (the proxy's `node`).
    pub node: String,
    /// A PURGE is also sent to the origin (an edge purges its shield too).
    pub purge_forward: bool,
    /// Document root served when no site is set.
    pub root: PathBuf,
    /// The sites fronted (`[[site]]` tables, and `cached.origin` as a default site); empty:
    /// the document root is served. Not to be changed after `load`: [`Self::site_for`]
    /// reads an index built from them.
    pub sites: Vec<Site>,
    /// PEM file of extra trust anchors for HTTPS servers, added to the system's store.
    pub tls_ca_file: Option<PathBuf>,
    /// The sites' host patterns, indexed.
    routes: Routes,
    /// Worker threads of cached (each serves one transfer at a time).
    pub threads: u32,
    /// Bytes of the L2 cache.
    pub capacity: u64,
    /// Larger objects stream through without being stored.
    pub max_object_size: u64,
    pub connect_timeout: Duration,
    /// Longest silence from the origin while reading its answer (504 or abort after).
    pub read_timeout: Duration,
    /// Idle upstream connections kept (per server).
    pub upstream_pool: usize,
    /// Largest request head the proxy forwards (`proxy.max_header_bytes`): what a request
    /// head sent upstream must have room for.
    pub max_header_bytes: usize,
    /// Longest an idle upstream connection is kept for reuse (shorter when the origin
    /// advertises a shorter `Keep-Alive: timeout`).
    pub upstream_idle: Duration,
    /// Messages the doorbell queue holds (≤ fs.mqueue.msg_max).
    pub queue_capacity: usize,
    /// How long a worker's L1 may serve a file before `cached` checks it again.
    pub revalidate: Duration,
    /// Most requests waiting on one fill in progress (more fetch on their own).
    pub max_waiters: usize,
    /// Least heuristic freshness lifetime, for answers that may get one (RFC 9111 §4.2.2:
    /// heuristically cacheable status or `public`, with a validator) and carry no explicit
    /// lifetime. 0: 10 % of the time since `Last-Modified` only.
    pub heuristic_floor: Duration,
    /// What happens to a storable answer that carries `Set-Cookie`.
    pub set_cookie: SetCookie,
    /// How long past its lifetime a stored answer without `stale-if-error` may be served
    /// when the origin fails (Varnish's `default_grace`; 0: never).
    pub grace: Duration,
    /// How long past its lifetime (and past every stale window) a stored answer is kept for
    /// revalidation with a conditional request; older, it counts as a miss.
    pub keep: Duration,
    /// Response fields that target this cache (RFC 9213), in priority order: the first
    /// present with a valid value replaces `Cache-Control` and `Expires` for storing and
    /// freshness. Default `["CDN-Cache-Control"]`; empty: `Cache-Control` only.
    pub targeted_cache_control: Vec<String>,
    /// Remove the targeted fields from answers sent downstream (default false: passed on,
    /// for caches further down that are targeted by them too).
    pub strip_targeted: bool,
}

/// `proxy.access_log_format`: `"combined"`, `"json"` or a field list, text with `$name`
/// variables (as nginx's `log_format`), e.g. `"$remote_addr $status $body_bytes_sent $cache"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Text: literal pieces and variables, in order; `"combined"` is
    /// [`LogFormat::COMBINED`] read as a field list.
    Fields(Vec<LogPart>),
    /// One JSON object per line, every variable of [`LogVar::JSON`] a member.
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogPart {
    Text(String),
    Var(LogVar),
}

/// The variables of the access log (nginx's names where nginx has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogVar {
    /// The client's address.
    RemoteAddr,
    /// Always `-` (no authentication).
    RemoteUser,
    /// `22/Nov/2026:08:01:42 +0000` (UTC).
    TimeLocal,
    /// `2026-11-22T08:01:42+00:00` (UTC).
    TimeIso8601,
    /// The request line: `GET /a?b HTTP/1.1`.
    Request,
    RequestMethod,
    /// The target as the client sent it, query included.
    RequestUri,
    /// The status sent; `499` when the client went away before any answer (as nginx).
    Status,
    /// Body bytes sent to the client, head not included (`0` for none).
    BodyBytesSent,
    /// Everything sent to the client, head included.
    BytesSent,
    HttpReferer,
    HttpUserAgent,
    /// The request's `Host`.
    Host,
    /// The cache outcome, as `X-Cache`: `HIT`, `MISS`, `PASS`, `COLLAPSED`, `STALE`, …
    Cache,
    /// The origin's status when it took part in the answer, else `-`.
    UpstreamStatus,
    /// Seconds from the request head received to the answer sent, to the µs (`0.000412`).
    RequestTime,
    /// The site that answered (its name in cached's site table), `-` for none.
    Site,
    /// This node's name (`node`).
    Node,
}

impl LogVar {
    /// Every variable with its name.
    pub const ALL: &[(&str, LogVar)] = &[
        ("remote_addr", LogVar::RemoteAddr),
        ("remote_user", LogVar::RemoteUser),
        ("time_local", LogVar::TimeLocal),
        ("time_iso8601", LogVar::TimeIso8601),
        ("request", LogVar::Request),
        ("request_method", LogVar::RequestMethod),
        ("request_uri", LogVar::RequestUri),
        ("status", LogVar::Status),
        ("body_bytes_sent", LogVar::BodyBytesSent),
        ("bytes_sent", LogVar::BytesSent),
        ("http_referer", LogVar::HttpReferer),
        ("http_user_agent", LogVar::HttpUserAgent),
        ("host", LogVar::Host),
        ("cache", LogVar::Cache),
        ("upstream_status", LogVar::UpstreamStatus),
        ("request_time", LogVar::RequestTime),
        ("site", LogVar::Site),
        ("node", LogVar::Node),
    ];

    /// The members of a `json` line, in order (`time_local` is left out: `time_iso8601`).
    pub const JSON: &[LogVar] = &[
        LogVar::TimeIso8601,
        LogVar::RemoteAddr,
        LogVar::RemoteUser,
        LogVar::Request,
        LogVar::RequestMethod,
        LogVar::RequestUri,
        LogVar::Status,
        LogVar::BodyBytesSent,
        LogVar::BytesSent,
        LogVar::HttpReferer,
        LogVar::HttpUserAgent,
        LogVar::Host,
        LogVar::Cache,
        LogVar::UpstreamStatus,
        LogVar::RequestTime,
        LogVar::Site,
        LogVar::Node,
    ];

    pub fn name(self) -> &'static str {
        LogVar::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }
}

impl LogFormat {
    /// The Combined Log Format, as nginx's predefined `combined`.
    pub const COMBINED: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

    pub fn parse(v: &str) -> Result<LogFormat, String> {
        match v {
            "combined" => LogFormat::fields(LogFormat::COMBINED),
            "json" => Ok(LogFormat::Json),
            _ if v.contains('$') => LogFormat::fields(v),
            other => Err(format!(
                "must be \"combined\", \"json\" or a field list with $variables (got {other:?})"
            )),
        }
    }

    fn fields(v: &str) -> Result<LogFormat, String> {
        if let Some(c) = v.chars().find(|c| c.is_control()) {
            return Err(format!(
                "a field list holds no control characters (got {c:?})"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = v;
        while let Some(i) = rest.find('$') {
            if i > 0 {
                parts.push(LogPart::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 1..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            let var = LogVar::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let known: Vec<String> =
                        LogVar::ALL.iter().map(|(n, _)| format!("${n}")).collect();
                    format!("unknown variable ${name} (known: {})", known.join(" "))
                })?;
            parts.push(LogPart::Var(var));
            rest = &after[end..];
        }
        if !rest.is_empty() {
            parts.push(LogPart::Text(rest.to_string()));
        }
        Ok(LogFormat::Fields(parts))
    }
}

/// `cached.set_cookie`: the policy for storable answers carrying `Set-Cookie`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetCookie {
    /// Not stored: the answer goes to its own client only (collapsed followers fetch
    /// their own). The default, like Varnish, nginx and the big CDNs.
    #[default]
    Pass,
    /// Stored with its `Set-Cookie`, as RFC 9111 allows (every later client gets it).
    Store,
    /// Stored without the `Set-Cookie` field; the first client still gets its cookie.
    Strip,
}

impl SetCookie {
    fn parse(v: &str) -> Result<SetCookie, String> {
        match v {
            "pass" => Ok(SetCookie::Pass),
            "store" => Ok(SetCookie::Store),
            "strip" => Ok(SetCookie::Strip),
            other => Err(format!(
                "must be \"pass\", \"store\" or \"strip\" (got {other:?})"
            )),
        }
    }
}

/// The scheme of an origin server's URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One origin server: `http(s)://host[:port][/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    /// Lowercase; an IPv6 address keeps its brackets (`[::1]`).
    pub host: String,
    /// As given, else the scheme's default (80 or 443).
    pub port: u16,
    /// Path prefix put before every request target, without trailing slash ("" for none).
    pub prefix: String,
}

impl Origin {
    /// Parses `http://` or `https://` (any case), then `host[:port]`, then an optional path
    /// prefix. User info, a query, a fragment, white space and other schemes are refused.
    pub fn parse(url: &str) -> Result<Origin, String> {
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("white space or a control character in {url:?}"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("must start with http:// or https:// (got {url:?})"));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => {
                return Err(format!(
                    "scheme {scheme:?} is not supported: use http:// or https:// (got {url:?})"
                ))
            }
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "an origin URL has no query or fragment (got {url:?})"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!("user info (user@) is not supported (got {url:?})"));
        }
        let (host, port) = parse_authority(authority).map_err(|e| format!("{e} in {url:?}"))?;
        Ok(Origin {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, always with the port (for connecting and pool keys).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `scheme://host:port`, always with the port and without the prefix.
    pub fn base_url(&self) -> String {
        format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }

    /// The `Host` this server expects: `host`, plus `:port` when the port is not the
    /// scheme's default.
    pub fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            self.authority()
        }
    }

    /// Absolute URL for a request target (origin-form, starting with '/').
    pub fn url_for(&self, target: &str) -> String {
        format!("{}{}{}", self.base_url(), self.prefix, target)
    }
}

impl std::fmt::Display for Origin {
    /// `scheme://host:port/prefix`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.base_url(), self.prefix)
    }
}

/// Splits `host[:port]` (IPv6 in brackets) and checks both; the host comes back lowercase.
fn parse_authority(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err("unclosed '[' in the host".into());
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address [{addr}]"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ']'")?),
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err("an IPv6 address goes in brackets ([::1])".into());
        }
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let host = host.to_ascii_lowercase();
        check_dns_name(&host).map_err(|e| format!("bad host {host:?}: {e}"))?;
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port {p:?} (must be 1..=65535)"))?,
        ),
    };
    Ok((host, port))
}

/// A host name or IPv4 address: dot-separated labels of `[a-z0-9_-]` (lowercase), 1 to 63
/// bytes each, 253 in all.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 bytes".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or double dot)".into());
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
        {
            return Err(if c.is_ascii_uppercase() {
                "must be lowercase".into()
            } else {
                format!("{c:?} is not allowed (only a-z, 0-9, '-', '_' and dots)")
            });
        }
    }
    Ok(())
}

/// A `hosts` pattern: a lowercase name (`www.example.com`), the same behind `*.` (every name
/// below it), or an IPv6 address in brackets. No port: a site matches any port.
fn check_host_pattern(p: &str) -> Result<(), String> {
    if let Some(inner) = p.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(a) if a.parse::<std::net::Ipv6Addr>().is_ok() && a == a.to_ascii_lowercase() => {
                Ok(())
            }
            _ => Err(format!("{p:?} is not a lowercase IPv6 address in brackets")),
        };
    }
    let name = p.strip_prefix("*.").unwrap_or(p);
    if name.contains('*') {
        return Err(format!(
            "{p:?}: a wildcard is a whole first label, as in \"*.example.org\""
        ));
    }
    if name.contains(':') {
        return Err(format!(
            "{p:?}: a host pattern has no port (a site matches every port)"
        ));
    }
    check_dns_name(name).map_err(|e| match e.as_str() {
        "must be lowercase" => format!("{p:?} must be lowercase: {:?}", p.to_ascii_lowercase()),
        _ => format!("{p:?}: {e}"),
    })
}

/// `site.host_header`: the `Host` sent to a site's servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's (normalised) `Host`: `"client"`, the default for sites with hosts.
    Client,
    /// The server's own `host[:port]` ([`Origin::host_header`]): `"origin"`, the default
    /// for the default site.
    Origin,
    /// This literal `host[:port]`: any other string.
    Name(String),
}

impl HostHeader {
    fn parse(v: &str) -> Result<HostHeader, String> {
        match v {
            "client" => Ok(HostHeader::Client),
            "origin" => Ok(HostHeader::Origin),
            name => match parse_authority(name) {
                Ok(_) => Ok(HostHeader::Name(name.to_ascii_lowercase())),
                Err(e) => Err(format!(
                    "must be \"client\", \"origin\" or a host[:port] ({e}; got {name:?})"
                )),
            },
        }
    }
}

/// `site.balance`: how a site's requests are spread over its healthy servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each server in turn: `"round-robin"`, the default.
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight: `"least-connections"`.
    LeastConnections,
    /// A consistent hash of the cache key, so a key keeps its server: `"uri-hash"`.
    UriHash,
}

impl Balance {
    fn parse(v: &str) -> Result<Balance, String> {
        match v {
            "round-robin" => Ok(Balance::RoundRobin),
            "least-connections" => Ok(Balance::LeastConnections),
            "uri-hash" => Ok(Balance::UriHash),
            other => Err(format!(
                "must be \"round-robin\", \"least-connections\" or \"uri-hash\" (got {other:?})"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
            Balance::UriHash => "uri-hash",
        }
    }
}

/// `site.health`: active health checks of each server of a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Path requested with GET (starts with '/'); any 2xx or 3xx answer is a success.
    pub path: String,
    /// Time between two checks of a server (`interval_ms`, 2000).
    pub interval: Duration,
    /// Longest a check may take, connecting included (`timeout_ms`, 1000; at most the
    /// interval).
    pub timeout: Duration,
    /// Successes in a row that bring a server that is down back (2).
    pub rise: u32,
    /// Failures in a row that take a server that is up out (3).
    pub fall: u32,
}

/// One `[[site]]`: the requests whose `Host` matches `hosts`, and the servers they go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Names the site in logs, stats and cache keys (`name`; default: the first host
    /// pattern, or "default" for the default site).
    pub name: String,
    /// Host patterns (`www.example.com`, `*.example.org`, `[::1]`); empty: the default site,
    /// which takes every request no other site matches.
    pub hosts: Vec<String>,
    /// The site's servers, at least one.
    pub origins: Vec<Origin>,
    /// The `Host` sent upstream.
    pub host_header: HostHeader,
    /// Name verified in the servers' certificates and sent as SNI, instead of each URL's host.
    pub tls_server_name: Option<String>,
    /// Whether HTTPS servers' certificates are verified (true; false logs a warning).
    pub tls_verify: bool,
    pub balance: Balance,
    /// Active checks; `None`: servers are judged by the requests they serve only.
    pub health: Option<Health>,
}

impl Site {
    /// The site without hosts, which takes the requests no other site matches.
    pub fn is_default(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// The host patterns of every site, indexed once at load for [`CachedConfig::site_for`].
#[derive(Clone, Debug, Default)]
struct Routes {
    /// Exact names → site index.
    exact: HashMap<Vec<u8>, usize>,
    /// `*.suffix` patterns, keyed by the suffix without `*.` → site index.
    wildcard: HashMap<Vec<u8>, usize>,
    default: Option<usize>,
}

impl Routes {
    fn new(sites: &[Site]) -> Routes {
        let mut r = Routes::default();
        for (i, s) in sites.iter().enumerate() {
            if s.is_default() {
                r.default = Some(i);
            }
            for h in &s.hosts {
                match h.strip_prefix("*.") {
                    Some(suffix) => r.wildcard.insert(suffix.as_bytes().to_vec(), i),
                    None => r.exact.insert(h.as_bytes().to_vec(), i),
                };
            }
        }
        r
    }

    fn find(&self, host: &[u8]) -> Option<usize> {
        let name = if host.first() == Some(&b'[') {
            match host.iter().position(|&b| b == b']') {
                Some(i) => &host[..=i],
                None => host,
            }
        } else {
            match host.iter().rposition(|&b| b == b':') {
                Some(i) => &host[..i],
                None => host,
            }
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        let lowered;
        let name = if name.iter().any(u8::is_ascii_uppercase) {
            lowered = name.to_ascii_lowercase();
            &lowered[..]
        } else {
            name
        };
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        if !self.wildcard.is_empty() && name.first() != Some(&b'[') {
            // Left to right: the longest suffix (most specific wildcard) first.
            for (i, _) in name.iter().enumerate().filter(|(_, &b)| b == b'.') {
                if let Some(&s) = self.wildcard.get(&name[i + 1..]) {
                    return Some(s);
                }
            }
        }
        self.default
    }
}

fn node(doc: &Doc) -> Result<String, ConfigError> {
    match doc.opt_str("node")? {
        None => Ok(crate::node::default_name()),
        Some(n) if crate::node::valid(&n) => Ok(n),
        Some(n) => Err(doc.err(
            "node",
            format!("must be 1..=64 of [A-Za-z0-9._-] (got {n:?})"),
        )),
    }
}

fn instance(doc: &Doc) -> Result<String, ConfigError> {
    let instance = doc.str("instance")?;
    if !crate::names::valid_instance(&instance) {
        return Err(doc.err(
            "instance",
            format!("must be 1..=32 of [A-Za-z0-9_-] (got {instance:?})"),
        ));
    }
    Ok(instance)
}

/// An access list: addresses or CIDR ranges.
fn nets(doc: &Doc, key: &str) -> Result<Vec<IpNet>, ConfigError> {
    doc.list(key)?
        .iter()
        .map(|s| IpNet::parse(s).map_err(|e| doc.item_err(key, s, e)))
        .collect()
}

impl ProxyConfig {
    pub fn load(
        file: Option<&Path>,
        flags: &[(String, String)],
    ) -> Result<ProxyConfig, ConfigError> {
        let doc = Doc::load(file, flags)?;
        let d = &doc;
        let workers = d.int("proxy.workers")? as u32;
        let threads = d.int("proxy.threads")? as u32;
        let segments = d.int("proxy.segments")? as u32;
        // Default: half the threads, and no more than half the segments over all workers.
        let client_wait_threads = match d.opt_int("proxy.client_wait_threads")? {
            None => (threads / 2).min(segments / (2 * workers)).max(1),
            Some(n) if n <= u64::from(threads) => n as u32,
            Some(n) => {
                return Err(d.err(
                    "proxy.client_wait_threads",
                    format!("must be in 1..={threads} (proxy.threads) (got {n})"),
                ))
            }
        };
        Ok(ProxyConfig {
            instance: instance(d)?,
            node: node(d)?,
            listen: d.addrs("proxy.listen")?,
            workers,
            threads,
            pollers: d.int("proxy.pollers")? as u32,
            accept_coalesce: Duration::from_micros(d.int("proxy.accept_coalesce_us")?),
            segments,
            segment_size: d.int("proxy.segment_size")? as usize,
            chunk_slots: d.int("proxy.chunk_slots")? as u32,
            pool_wait: d.ms("proxy.pool_wait_ms")?,
            header_timeout: d.ms("proxy.header_timeout_ms")?,
            idle_timeout: d.ms("proxy.idle_timeout_ms")?,
            send_timeout: d.ms("proxy.send_timeout_ms")?,
            min_send_rate: d.int("proxy.min_send_rate")?,
            min_recv_rate: d.int("proxy.min_recv_rate")?,
            min_rate_grace: d.ms("proxy.min_rate_grace_ms")?,
            client_wait_threads,
            cached_timeout: d.ms("proxy.cached_timeout_ms")?,
            max_header_bytes: d.int("proxy.max_header_bytes")? as usize,
            max_headers: d.int("proxy.max_headers")? as usize,
            max_body_bytes: d.int("proxy.max_body_bytes")?,
            max_connections: d.int("proxy.max_connections")? as usize,
            access_log: d
                .opt_str("proxy.access_log")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            access_log_format: LogFormat::parse(&d.str("proxy.access_log_format")?)
                .map_err(|m| d.err("proxy.access_log_format", m))?,
            access_log_max_bytes: d.int("proxy.access_log_max_bytes")?,
            access_log_keep: d.int("proxy.access_log_keep")? as u32,
            stats_allow: nets(d, "proxy.stats_allow")?,
            trusted_proxies: nets(d, "proxy.trusted_proxies")?,
            drain: d.ms("proxy.drain_ms")?,
        })
    }
}

impl CachedConfig {
    pub fn load(
        file: Option<&Path>,
        flags: &[(String, String)],
    ) -> Result<CachedConfig, ConfigError> {
        let doc = Doc::load(file, flags)?;
        let d = &doc;
        let sites = sites(d)?;
        let tls_ca_file = match d.opt_str("cached.tls_ca_file")?.as_deref() {
            None | Some("") => None,
            Some(f) => {
                let readable = std::fs::File::open(f).and_then(|file| {
                    if file.metadata()?.is_file() {
                        Ok(())
                    } else {
                        Err(io::Error::other("not a regular file"))
                    }
                });
                if let Err(e) = readable {
                    return Err(d.err("cached.tls_ca_file", format!("cannot read {f:?}: {e}")));
                }
                Some(PathBuf::from(f))
            }
        };
        let msg_max = crate::mq::kernel_msg_max().unwrap_or(10) as u64;
        let queue_capacity = d.int("cached.queue_capacity")?;
        if queue_capacity > msg_max {
            let default = if d.has("cached.queue_capacity") {
                ""
            } else {
                " (the default)"
            };
            return Err(d.err(
                "cached.queue_capacity",
                format!("{queue_capacity}{default} exceeds the kernel's fs.mqueue.msg_max ({msg_max}); lower it or raise the sysctl"),
            ));
        }
        let set_cookie = SetCookie::parse(&d.str("cached.set_cookie")?)
            .map_err(|e| d.err("cached.set_cookie", e))?;
        Ok(CachedConfig {
            instance: instance(d)?,
            node: node(d)?,
            purge_forward: d.bool("cached.purge_forward")?,
            root: PathBuf::from(d.str("cached.root")?),
            routes: Routes::new(&sites),
            sites,
            tls_ca_file,
            threads: d.int("cached.threads")? as u32,
            capacity: d.int("cached.capacity")?,
            max_object_size: d.int("cached.max_object_size")?,
            connect_timeout: d.ms("cached.connect_timeout_ms")?,
            read_timeout: d.ms("cached.read_timeout_ms")?,
            upstream_pool: d.int("cached.upstream_pool")? as usize,
            max_header_bytes: d.int("proxy.max_header_bytes")? as usize,
            upstream_idle: d.ms("cached.upstream_idle_ms")?,
            queue_capacity: queue_capacity as usize,
            revalidate: d.ms("cached.revalidate_ms")?,
            max_waiters: d.int("cached.max_waiters")? as usize,
            heuristic_floor: d.ms("cached.heuristic_ttl_ms")?,
            set_cookie,
            grace: d.ms("cached.grace_ms")?,
            keep: d.ms("cached.keep_ms")?,
            targeted_cache_control: {
                let mut names = d.list("cached.targeted_cache_control")?;
                names.retain(|n| !n.is_empty());
                let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if let Some(bad) = names.iter().find(|n| !n.bytes().all(tchar)) {
                    let msg = format!("{bad:?} is not a field name");
                    return Err(d.item_err("cached.targeted_cache_control", bad, msg));
                }
                names
            },
            strip_targeted: d.bool("cached.strip_targeted")?,
        })
    }
}

impl CachedConfig {
    /// The site of a request by its `Host` as the proxy normalises it (lowercase, default
    /// port dropped, IPv6 in brackets, maybe `:port`), matched without the port: an exact
    /// pattern first, then the longest `*.suffix` (`*.example.org` matches `a.example.org`
    /// and `a.b.example.org`, not `example.org`), then the default site. `None`: no site
    /// takes it (421), or there are no sites at all.
    pub fn site_for(&self, host: &[u8]) -> Option<&Site> {
        self.sites.get(self.routes.find(host)?)
    }

    /// Settings that load but deserve a word at start (cached logs each as a warning).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for s in &self.sites {
            let https = s.origins.iter().any(|o| o.scheme == Scheme::Https);
            if !s.tls_verify {
                w.push(format!(
                    "site {:?}: tls_verify = false: the certificates of its HTTPS servers are not \
                     checked, so anyone on the path can impersonate them",
                    s.name
                ));
            }
            if !https && (s.tls_server_name.is_some() || !s.tls_verify) {
                w.push(format!(
                    "site {:?}: TLS settings have no effect: none of its servers is https://",
                    s.name
                ));
            }
        }
        let any_https = self
            .sites
            .iter()
            .flat_map(|s| &s.origins)
            .any(|o| o.scheme == Scheme::Https);
        if let Some(f) = &self.tls_ca_file {
            if !any_https {
                w.push(format!(
                    "tls_ca_file {}: no effect: no server is https://",
                    f.display()
                ));
            }
        }
        w
    }
}

/// The `[[site]]` tables, then `cached.origin` (file or flags) as the default site: from the
/// command line it replaces the servers of a default `[[site]]` or adds a default site named
/// "default"; in the file it may not be combined with a default `[[site]]`.
fn sites(d: &Doc) -> Result<Vec<Site>, ConfigError> {
    let mut sites = Vec::with_capacity(d.sites + 1);
    for i in 0..d.sites {
        sites.push(site(d, i)?);
    }
    let site_err = |i: usize, key: &str, msg: String| d.err(&format!("site[{i}].{key}"), msg);
    let host_err = |i: usize, h: &str, msg: String| d.item_err(&format!("site[{i}].hosts"), h, msg);
    let mut default: Option<usize> = None;
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut patterns: HashMap<&str, usize> = HashMap::new();
    for (i, s) in sites.iter().enumerate() {
        if s.is_default() {
            if let Some(j) = default {
                return Err(site_err(
                    i,
                    "hosts",
                    format!(
                        "missing: site[{j}] is already the default site (the one without hosts)"
                    ),
                ));
            }
            default = Some(i);
        }
        if let Some(j) = names.insert(&s.name, i) {
            return Err(site_err(
                i,
                "name",
                format!("{:?} is already the name of site[{j}]", s.name),
            ));
        }
        for h in &s.hosts {
            match patterns.insert(h, i) {
                Some(j) if j == i => return Err(host_err(i, h, format!("{h:?} is listed twice"))),
                Some(j) => {
                    return Err(host_err(
                        i,
                        h,
                        format!("{h:?} is already a host of site[{j}]"),
                    ))
                }
                None => {}
            }
        }
    }
    let urls = d.list("cached.origin")?;
    if urls.is_empty() {
        return Ok(sites);
    }
    let origins = urls
        .iter()
        .map(|u| Origin::parse(u).map_err(|e| d.item_err("cached.origin", u, e)))
        .collect::<Result<Vec<_>, _>>()?;
    match default {
        Some(i) if d.set_by_flag("cached.origin") => sites[i].origins = origins,
        Some(i) => {
            return Err(d.err(
                "cached.origin",
                format!(
                    "site[{i}] is already the default site (no hosts): list these servers in its origins"
                ),
            ))
        }
        None => {
            if let Some(j) = names.get("default") {
                return Err(d.err(
                    "cached.origin",
                    format!("makes a site named \"default\", but site[{j}] has that name"),
                ));
            }
            sites.push(Site {
                name: "default".into(),
                hosts: Vec::new(),
                origins,
                host_header: HostHeader::Origin,
                tls_server_name: None,
                tls_verify: true,
                balance: Balance::RoundRobin,
                health: None,
            })
        }
    }
    Ok(sites)
}

/// `[[site]]` table `i`.
fn site(d: &Doc, i: usize) -> Result<Site, ConfigError> {
    let k = |key: &str| format!("site[{i}].{key}");
    let err = |key: &str, msg: String| d.err(&k(key), msg);
    let hosts = d.list(&k("hosts"))?;
    for h in &hosts {
        check_host_pattern(h).map_err(|e| d.item_err(&k("hosts"), h, e))?;
    }
    let origins = d
        .list(&k("origins"))?
        .iter()
        .map(|u| Origin::parse(u).map_err(|e| d.item_err(&k("origins"), u, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if origins.is_empty() {
        return Err(err(
            "origins",
            "missing: a site needs at least one server (\"https://host[:port]\")".into(),
        ));
    }
    let name = match d.opt_str(&k("name"))? {
        Some(n) => {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\'));
            if !ok {
                return Err(err(
                    "name",
                    format!("must be 1 to 64 printable ASCII characters without spaces or quotes (got {n:?})"),
                ));
            }
            n
        }
        None => hosts.first().cloned().unwrap_or_else(|| "default".into()),
    };
    let host_header = match d.opt_str(&k("host_header"))?.as_deref() {
        Some(v) => HostHeader::parse(v).map_err(|e| err("host_header", e))?,
        None if hosts.is_empty() => HostHeader::Origin,
        None => HostHeader::Client,
    };
    let tls_server_name = match d.opt_str(&k("tls_server_name"))? {
        None => None,
        Some(n) => {
            let lower = n.to_ascii_lowercase();
            if lower.parse::<std::net::IpAddr>().is_err() {
                check_dns_name(&lower).map_err(|e| {
                    err(
                        "tls_server_name",
                        format!("not a host name or address ({e}; got {n:?})"),
                    )
                })?;
            }
            Some(lower)
        }
    };
    let balance = Balance::parse(&d.str(&k("balance"))?).map_err(|e| err("balance", e))?;
    let health = if d.has(&k("health")) {
        Some(health(d, &k("health"))?)
    } else {
        None
    };
    Ok(Site {
        name,
        hosts,
        origins,
        host_header,
        tls_server_name,
        tls_verify: d.bool(&k("tls_verify"))?,
        balance,
        health,
    })
}

/// `site[i].health` (named `h`), with HAProxy's defaults: every 2 s, 1 s timeout, up after
/// 2, down after 3.
fn health(d: &Doc, h: &str) -> Result<Health, ConfigError> {
    let k = |key: &str| format!("{h}.{key}");
    let path = match d.opt_str(&k("path"))? {
        None => return Err(d.err(&k("path"), "missing: the path to check (\"/healthz\")")),
        Some(p)
            if !p.starts_with('/')
                || p.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '#') =>
        {
            return Err(d.err(
                &k("path"),
                format!("must start with '/', without spaces or a fragment (got {p:?})"),
            ))
        }
        Some(p) => p,
    };
    let interval = d.int(&k("interval_ms"))?;
    let timeout = match d.opt_int(&k("timeout_ms"))? {
        None => d.int(&k("timeout_ms"))?.min(interval),
        Some(t) if t <= interval => t,
        Some(t) => {
            return Err(d.err(
                &k("timeout_ms"),
                format!(
                    "must be in 1ms..={} (interval_ms) (got {})",
                    keys::fmt_duration_us(interval * 1000),
                    keys::fmt_duration_us(t * 1000)
                ),
            ))
        }
    };
    Ok(Health {
        path,
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        rise: d.int(&k("rise"))? as u32,
        fall: d.int(&k("fall"))? as u32,
    })
}

/// The configuration file read when there is no `--config` and no [`CONFIG_ENV`]; a missing
/// one means built-in defaults. Binaries installed with `cargo install` look here.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/shmproxy/shmproxy.toml";

/// Environment variable naming the configuration file when there is no `--config`; set and
/// empty, no file is read (the tests set it so, so they never read `/etc/shmproxy`).
pub const CONFIG_ENV: &str = "SHMPROXY_CONFIG";

/// `cached.root` when neither the file nor `--root` sets it: absolute, so a daemon's working
/// directory never decides what it serves (`scripts/run.sh` serves the repository's `www/`).
pub const DEFAULT_ROOT: &str = "/var/www/shmproxy";

/// How the configuration file was chosen, for the start-up line and `--check`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FileOrigin {
    /// `--config FILE`.
    #[default]
    Flag,
    /// [`CONFIG_ENV`] named it.
    Env,
    /// [`DEFAULT_CONFIG_FILE`], which exists.
    Default,
    /// No file: [`CONFIG_ENV`] is set and empty.
    EnvEmpty,
    /// No file: no `--config`, no [`CONFIG_ENV`], and [`DEFAULT_CONFIG_FILE`] does not exist.
    NoDefault,
}

/// A daemon's command line: `--config FILE`, flags that set config keys, and switches.
#[derive(Clone, Debug, Default)]
pub struct CommandLine {
    /// The file to read (`--config`, else [`CONFIG_ENV`], else [`DEFAULT_CONFIG_FILE`] if it
    /// exists); `None`: built-in defaults and the flags.
    pub file: Option<PathBuf>,
    pub file_origin: FileOrigin,
    /// `(config key, value)` in the order given.
    pub flags: Vec<(String, String)>,
    /// The switches (flags without a value) that were given.
    pub switches: Vec<&'static str>,
}

/// Parses the process's arguments: `keys` maps each `--flag` to its config key, `switches`
/// lists the value-less flags. `Ok(None)` when `--help` printed `help`.
pub fn parse_command_line(
    help: &str,
    keys: &[(&str, &str)],
    switches: &[&'static str],
) -> Result<Option<CommandLine>, ConfigError> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut cl = CommandLine::default();
    let bad = |e: lexopt::Error| ConfigError(format!("command line: {e}"));
    while let Some(arg) = parser.next().map_err(bad)? {
        let name = match arg {
            Short('h') | Long("help") => {
                print!("{help}");
                return Ok(None);
            }
            Long("config") => {
                cl.file = Some(parser.value().map_err(bad)?.into());
                continue;
            }
            Long(name) => name.to_string(),
            other => return Err(bad(other.unexpected())),
        };
        if let Some(s) = switches.iter().find(|s| **s == name) {
            cl.switches.push(s);
            continue;
        }
        let Some((_, key)) = keys.iter().find(|(flag, _)| *flag == name) else {
            return Err(ConfigError(format!(
                "command line: unknown option --{name} (see --help)"
            )));
        };
        let value = parser.value().map_err(bad)?.string().map_err(bad)?;
        cl.flags.push((key.to_string(), value));
    }
    if cl.file.is_none() {
        (cl.file, cl.file_origin) = config_file(
            std::env::var_os(CONFIG_ENV),
            Path::new(DEFAULT_CONFIG_FILE).exists(),
        );
    }
    Ok(Some(cl))
}

/// The file when `--config` is absent: [`CONFIG_ENV`] (`env`), else the default file if it
/// exists (`default_exists`), else none.
fn config_file(
    env: Option<std::ffi::OsString>,
    default_exists: bool,
) -> (Option<PathBuf>, FileOrigin) {
    match env {
        Some(v) if v.is_empty() => (None, FileOrigin::EnvEmpty),
        Some(v) => (Some(v.into()), FileOrigin::Env),
        None if default_exists => (Some(DEFAULT_CONFIG_FILE.into()), FileOrigin::Default),
        None => (None, FileOrigin::NoDefault),
    }
}

impl CommandLine {
    /// Which configuration is read, for a log line: `/etc/shmproxy/shmproxy.toml`, or
    /// `built-in defaults (no /etc/shmproxy/shmproxy.toml)`.
    pub fn describe(&self) -> String {
        match (&self.file, &self.file_origin) {
            (Some(f), FileOrigin::Env) => format!("{} (from {CONFIG_ENV})", f.display()),
            (Some(f), _) => f.display().to_string(),
            (None, FileOrigin::EnvEmpty) => format!("built-in defaults ({CONFIG_ENV} is empty)"),
            (None, _) => format!("built-in defaults (no {DEFAULT_CONFIG_FILE})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_www_on_8080() {
        let p = ProxyConfig::load(None, &[]).unwrap();
        assert_eq!(p.listen, ["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(p.instance, "shmproxy");
        let c = CachedConfig::load(None, &[]).unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert!(c.root.is_absolute());
        assert!(c.sites.is_empty() && c.tls_ca_file.is_none());
        assert!(c.site_for(b"example.com").is_none());
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn slow_client_limits_default_and_validate() {
        let p = ProxyConfig::load(None, &[]).unwrap();
        assert_eq!((p.min_send_rate, p.min_recv_rate), (500, 500));
        assert_eq!(p.min_rate_grace, Duration::from_secs(10));
        // 64 threads, 128 segments over 2 workers: half of either.
        assert_eq!(p.client_wait_threads, 32);
        let p = ProxyConfig::load(
            None,
            &flags(&[("proxy.threads", "8"), ("proxy.segments", "4")]),
        )
        .unwrap();
        assert_eq!(p.client_wait_threads, 1);
        let p = ProxyConfig::load(None, &flags(&[("proxy.min_send_rate", "0")])).unwrap();
        assert_eq!(p.min_send_rate, 0);
        for (k, v) in [
            ("proxy.client_wait_threads", "0"),
            ("proxy.client_wait_threads", "65"),
            ("proxy.min_rate_grace_ms", "0"),
            ("proxy.min_recv_rate", "2000000000000"),
        ] {
            let e = ProxyConfig::load(None, &flags(&[(k, v)]))
                .unwrap_err()
                .to_string();
            let name = k.rsplit('.').next().unwrap().replace('_', "-");
            assert!(e.contains(&name), "{k}={v}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("cfgtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("shmproxy.toml");
        std::fs::write(&f, "instance = \"a\"\n[proxy]\nsegments = 8\nworkers = 3\n").unwrap();
        let p = ProxyConfig::load(Some(&f), &flags(&[("proxy.segments", "9")])).unwrap();
        assert_eq!((p.instance.as_str(), p.segments, p.workers), ("a", 9, 3));

        std::fs::write(&f, "[proxy]\nsegmnts = 8\n").unwrap();
        let e = ProxyConfig::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("shmproxy.toml") && e.contains("segmnts"), "{e}");

        std::fs::write(&f, "[proxy]\nsegments = 0\n").unwrap();
        let e = ProxyConfig::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("proxy.segments") && e.contains("got 0"), "{e}");

        let e = ProxyConfig::load(None, &flags(&[("proxy.segment_size", "12")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("command line: --segment-size"), "{e}");

        let e = CachedConfig::load(None, &flags(&[("cached.origin", "ftp://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--origin"), "{e}");
        let e = ProxyConfig::load(None, &flags(&[("instance", "a/b")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("instance"), "{e}");
    }

    /// Writes `text` to a file of its own, loads it as the proxy does, and gives the error
    /// with the file's path as `FILE`.
    fn proxy_err(name: &str, text: &str, f: &[(&str, &str)]) -> String {
        let path = std::env::temp_dir().join(format!("cfg-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let r = ProxyConfig::load(Some(&path), &flags(f));
        let _ = std::fs::remove_file(&path);
        r.unwrap_err()
            .to_string()
            .replacen(&path.display().to_string(), "FILE", 1)
    }

    #[test]
    fn file_errors_give_line_column_full_key_and_what_was_expected() {
        for (text, want) in [
            ("[proxy]\nworkers = \"four\"\n", "FILE:2:11: proxy.workers: expected an integer, got \"four\""),
            ("[proxy]\nworkers = 0\n", "FILE:2:11: proxy.workers: must be in 1..=64 (got 0)"),
            ("# c\n\n[proxy]\n  segments   =   0\n", "FILE:4:18: proxy.segments: must be in 1..=4096 (got 0)"),
            ("[cached]\ncapacty = 1\n", "FILE:2:1: cached.capacty: unknown key (did you mean capacity?)"),
            ("[proxy]\nsegmnts = 8\n", "FILE:2:1: proxy.segmnts: unknown key (did you mean segments?)"),
            ("instanse = \"a\"\n", "FILE:1:1: instanse: unknown key (did you mean instance?)"),
            ("[proxi]\n", "FILE:1:2: proxi: unknown key (did you mean proxy?)"),
            ("[proxy]\nl1_capacity = 0\n", "FILE:2:1: proxy.l1_capacity: retired: hits are served from the shared arena sized by cached.capacity"),
            ("[proxy]\nl1_max_object_size = 1\n", "FILE:2:1: proxy.l1_max_object_size: retired: the shared arena stores objects up to cached.max_object_size"),
            ("[proxy]\ncapacity = 1\n", "FILE:2:1: proxy.capacity: unknown key (cached.capacity is a key of [cached])"),
            ("[proxy]\nfrobnicate = 1\n", "FILE:2:1: proxy.frobnicate: unknown key"),
            ("proxy = 3\n", "FILE:1:9: proxy: expected a table, got 3"),
            ("proxy.workers = true\n", "FILE:1:17: proxy.workers: expected an integer, got true"),
            ("[cached]\ncapacity = \"256XB\"\n", "FILE:2:12: cached.capacity: expected a size (bytes, or a number with a unit: 512k, 64KiB, 256MiB, 1g), got \"256XB\": unknown unit \"XB\""),
            ("[cached]\nconnect_timeout_ms = \"soon\"\n", "FILE:2:22: cached.connect_timeout_ms: expected a duration (milliseconds, or a number with a unit: 250ms, 5s, 2m, 1h), got \"soon\": a number must come before"),
            ("[proxy]\nlisten = \"example.com:80\"\n", "FILE:2:10: proxy.listen: expected an address (127.0.0.1:8080, [::1]:8080, localhost:8080, :8080) or a list of them, got \"example.com:80\": \"example.com\" is not an IP address"),
            ("[proxy]\nlisten = [\":80\", \"0.0.0.0:80\"]\n", "FILE:2:10: proxy.listen: 0.0.0.0:80 is listed twice"),
            ("[proxy]\nstats_allow = [\"10.0.0.0/33\"]\n", "FILE:2:16: proxy.stats_allow: bad prefix length"),
            ("[proxy]\nthreads = 8\nclient_wait_threads = 9\n", "FILE:3:23: proxy.client_wait_threads: must be in 1..=8 (proxy.threads) (got 9)"),
            ("[proxy]\nworkers = 2\nworkers = 3\n", "FILE:3:1: duplicate key `workers`"),
            ("[proxy]\nworkers = \n", "FILE:2:11: "),
        ] {
            let e = proxy_err("place", text, &[]);
            assert!(e.starts_with(want), "{text}\n  gave {e}\n  want {want}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // An element of a list is placed where it stands, on its own line if need be.
        let e = proxy_err(
            "item",
            "[proxy]\nstats_allow = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n",
            &[],
        );
        assert!(
            e.starts_with("FILE:4:3: proxy.stats_allow: bad prefix length in \"10.0.0.0/33\""),
            "{e}"
        );
        let text = "[[site]]\nhosts = [\"a.com\"]\norigins = [\n  \"http://a\",\n  \"ftp://b\",\n]\n\n[[site]]\nhosts = [\"b.com\", \"a.com\"]\norigins = \"http://c\"\n";
        let e = load_cached("items", text, &[]).unwrap_err();
        assert!(
            e.starts_with("FILE:5:3: site[0].origins: scheme \"ftp\""),
            "{e}"
        );
        let e = load_cached("items2", &text.replace("ftp://b", "http://b"), &[]).unwrap_err();
        assert!(
            e.starts_with("FILE:9:19: site[1].hosts: \"a.com\" is already a host of site[0]"),
            "{e}"
        );
        let e = load_cached(
            "items3",
            "[[site]]\nhosts = [\"a\", \"B\"]\norigins = \"http://c\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.starts_with("FILE:2:15: site[0].hosts: \"B\" must be lowercase"),
            "{e}"
        );

        // A key of a [[site]] names the site's index; a missing one points at its table.
        let o = "origins = [\"http://o\"]\n";
        for (text, want) in [
            (format!("[[site]]\n{o}\n[[site]]\nhosts = [\"a\"]\n{o}balance = 3\n"), "FILE:7:11: site[1].balance: expected a string, got 3"),
            (format!("[[site]]\n{o}health = {{ interval_ms = 100 }}\n"), "FILE:3:10: site[0].health.path: missing"),
            (format!("[[site]]\n{o}health = {{ path = \"/\", interval_ms = \"2h\", timeout_ms = \"3h\" }}\n"), "FILE:3:57: site[0].health.timeout_ms: must be in 1ms..=2h (interval_ms) (got 3h)"),
            ("[[site]]\nhosts = [\"a\"]\n".to_string(), "FILE:1:1: site[0].origins: missing"),
            (format!("site = [{{ {} }}, {{ hostz = 1 }}]\n", o.trim()), "FILE:1:39: site[1].hostz: unknown key"),
            ("site = 3\n".to_string(), "FILE:1:8: site: expected tables ([[site]]), got 3"),
        ] {
            let e = load_cached("siteplace", &text, &[]).map(|c| c.sites).unwrap_err();
            assert!(e.starts_with(want), "{text}\n  gave {e}\n  want {want}");
        }
    }

    #[test]
    fn flags_are_read_by_their_keys_type_and_errors_name_the_flag() {
        let e = |f: &[(&str, &str)]| ProxyConfig::load(None, &flags(f)).unwrap_err().to_string();
        assert_eq!(
            e(&[("proxy.workers", "four")]),
            "command line: --workers: expected an integer, got \"four\""
        );
        assert_eq!(
            e(&[("proxy.segment_size", "12")]),
            "command line: --segment-size: must be in 1KiB..=64MiB (got 12)"
        );
        assert!(e(&[("proxy.listen", "somewhere:80")])
            .starts_with("command line: --listen: expected an address"));
        // A flag is blamed only for its own key: the file's bad value keeps its place.
        let got = proxy_err("blame", "[proxy]\nthreads = 0\n", &[("proxy.workers", "3")]);
        assert!(
            got.starts_with("FILE:2:11: proxy.threads: must be in"),
            "{got}"
        );
        let got = proxy_err(
            "blame2",
            "[cached]\nthreads = \"x\"\n",
            &[("proxy.threads", "3")],
        );
        assert!(
            got.starts_with("FILE:2:11: cached.threads: expected an integer"),
            "{got}"
        );

        // Digits where a string is wanted stay a string; numbers where an address is wanted
        // are a port.
        let p = ProxyConfig::load(
            None,
            &flags(&[("instance", "123"), ("proxy.listen", "8080")]),
        )
        .unwrap();
        assert_eq!(p.instance, "123");
        assert_eq!(p.listen, ["0.0.0.0:8080".parse().unwrap()]);
        // --listen repeated, or with commas: every address, in order; flags replace the file.
        let p = ProxyConfig::load(
            None,
            &flags(&[
                ("proxy.listen", "localhost:8080"),
                ("proxy.workers", "1"),
                ("proxy.listen", "[::1]:8080,:9090"),
            ]),
        )
        .unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:9090"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(p.listen, want);
        // Units on the command line.
        let c = CachedConfig::load(
            None,
            &flags(&[
                ("cached.capacity", "1g"),
                ("cached.max_object_size", "512k"),
            ]),
        )
        .unwrap();
        assert_eq!((c.capacity, c.max_object_size), (1 << 30, 512 << 10));
    }

    #[test]
    fn sizes_and_durations_take_units_in_the_file() {
        let path = std::env::temp_dir().join(format!("cfg-{}-units.toml", std::process::id()));
        let text = "[proxy]\nlisten = [\"127.0.0.1:8080\", \"[::1]:8080\"]\nsegment_size = \"64KiB\"\n\
                    header_timeout_ms = \"5s\"\nidle_timeout_ms = \"2m\"\npool_wait_ms = 250\n\
                    accept_coalesce_us = \"1ms\"\nmax_body_bytes = \"10m\"\nmin_send_rate = \"1k\"\n\
                    [cached]\ncapacity = \"256MiB\"\nmax_object_size = 1048576\nheuristic_ttl_ms = \"1h\"\n\
                    connect_timeout_ms = \"1m30s\"\n";
        std::fs::write(&path, text).unwrap();
        let p = ProxyConfig::load(Some(&path), &[]).unwrap();
        let c = CachedConfig::load(Some(&path), &[]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(p.listen.len(), 2);
        assert_eq!(p.segment_size, 64 << 10);
        assert_eq!(p.header_timeout, Duration::from_secs(5));
        assert_eq!(p.idle_timeout, Duration::from_secs(120));
        assert_eq!(p.pool_wait, Duration::from_millis(250));
        assert_eq!(p.accept_coalesce, Duration::from_millis(1));
        assert_eq!((p.max_body_bytes, p.min_send_rate), (10 << 20, 1024));
        assert_eq!((c.capacity, c.max_object_size), (256 << 20, 1 << 20));
        assert_eq!(c.heuristic_floor, Duration::from_secs(3600));
        assert_eq!(c.connect_timeout, Duration::from_secs(90));
    }

    /// `key = value` and `# key = value` lines of shmproxy.toml, by full key: (value text,
    /// commented out).
    fn repository_config_lines() -> Vec<(String, String, bool)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shmproxy.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let (text, _) = text.split_once("# Sites.").expect("the sites block");
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{s}.");
                continue;
            }
            let (body, commented) = match line.strip_prefix("# ") {
                Some(b) => (b, true),
                None => (line, false),
            };
            let Some((k, v)) = body.split_once(" = ") else {
                continue;
            };
            if k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                out.push((format!("{section}{k}"), v.to_string(), commented));
            }
        }
        out
    }

    #[test]
    fn shmproxy_toml_lists_every_key_with_its_default() {
        let lines = repository_config_lines();
        for (key, value, commented) in &lines {
            let def =
                keys::lookup(key).unwrap_or_else(|| panic!("shmproxy.toml: {key}: not a key"));
            if *commented {
                // An example: for keys that are unset by default or computed.
                assert!(
                    def.default.is_none(),
                    "shmproxy.toml: {key} is commented out but defaults to {:?}",
                    def.default
                );
                keys::read_as(key, value, true)
                    .unwrap_or_else(|e| panic!("shmproxy.toml: {key} = {value}: {e}"));
            } else {
                keys::check_documented_default(key, value, true)
                    .unwrap_or_else(|e| panic!("shmproxy.toml: {e}"));
            }
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shmproxy.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let (_, sites) = text.split_once("# Keys of a [[site]]:").unwrap();
        for k in keys::KEYS {
            if matches!(k.ty, keys::Ty::Table | keys::Ty::Tables) {
                continue;
            }
            if let Some(sub) = k.name.strip_prefix("site.") {
                // Described in the comment block, health defaults as "[2000]".
                let short = sub.rsplit('.').next().unwrap();
                let line = sites
                    .lines()
                    .find(|l| {
                        l.trim_start_matches('#')
                            .trim_start()
                            .starts_with(&format!("{short} "))
                    })
                    .unwrap_or_else(|| panic!("shmproxy.toml does not describe {}", k.name));
                if let (Some(d), Some(b)) = (k.default, line.rfind('[')) {
                    if sub.starts_with("health.") {
                        let shown = line[b + 1..].trim_end().trim_end_matches(']');
                        keys::check_documented_default(k.name, shown, true)
                            .unwrap_or_else(|e| panic!("shmproxy.toml: {e} ({d})"));
                    }
                }
                continue;
            }
            assert!(
                lines.iter().any(|(key, _, _)| key == k.name),
                "shmproxy.toml lacks {}",
                k.name
            );
        }
    }

    #[test]
    fn readme_configuration_table_matches_the_key_list() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let text = std::fs::read_to_string(path).unwrap();
        let head = "| flag | key | default | meaning |\n|---|---|---|---|\n";
        let start = text.find(head).expect("README's configuration table") + head.len();
        let table = &text[start..text[start..].find("\n\n").map_or(text.len(), |e| start + e)];
        let mut rows = 0;
        for row in table.lines() {
            let cells: Vec<&str> = row.split(" | ").collect();
            assert!(cells.len() >= 4, "{row}");
            let key = cells[1].trim_matches('`');
            if key == "[[site]]" {
                continue;
            }
            let def = keys::lookup(key).unwrap_or_else(|| panic!("README: {key}: not a key"));
            let shown = cells[2].trim_matches('`');
            if def.default.is_none() && shown != "—" {
                // A computed default, described in words.
                assert!(keys::COMPUTED.contains(&key), "README: {key}: {shown}");
                continue;
            }
            // As TOML (`[]`, `2`) or as a flag's value (`127.0.0.1:8080`, `www`).
            keys::check_documented_default(key, shown, true)
                .or_else(|_| keys::check_documented_default(key, shown, false))
                .unwrap_or_else(|e| panic!("README: {e}"));
            rows += 1;
        }
        assert!(rows >= 15, "{rows} rows checked");
    }

    #[test]
    fn node_defaults_to_the_host_name_and_cluster_keys_load() {
        let p = ProxyConfig::load(None, &[]).unwrap();
        assert_eq!(p.node, crate::node::default_name());
        assert_eq!(p.drain, Duration::ZERO);
        let c = CachedConfig::load(None, &[]).unwrap();
        assert_eq!((c.node.as_str(), c.purge_forward), (p.node.as_str(), false));
        let f = flags(&[("node", "edge-1.a"), ("proxy.drain_ms", "3s")]);
        let p = ProxyConfig::load(None, &f).unwrap();
        assert_eq!(
            (p.node.as_str(), p.drain),
            ("edge-1.a", Duration::from_secs(3))
        );
        let c = CachedConfig::load(
            None,
            &flags(&[("node", "edge-1.a"), ("cached.purge_forward", "true")]),
        )
        .unwrap();
        assert_eq!((c.node.as_str(), c.purge_forward), ("edge-1.a", true));
        for bad in ["", "a b", "a,b", "edge(1)"] {
            let e = ProxyConfig::load(None, &flags(&[("node", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("node") && e.contains("[A-Za-z0-9._-]"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn set_cookie_policy_defaults_to_pass_and_names_key_and_file() {
        assert_eq!(
            CachedConfig::load(None, &[]).unwrap().set_cookie,
            SetCookie::Pass
        );
        for (v, want) in [
            ("pass", SetCookie::Pass),
            ("store", SetCookie::Store),
            ("strip", SetCookie::Strip),
        ] {
            let c = CachedConfig::load(None, &flags(&[("cached.set_cookie", v)])).unwrap();
            assert_eq!(c.set_cookie, want);
        }
        let path = std::env::temp_dir().join(format!("setcookie-{}.toml", std::process::id()));
        std::fs::write(&path, "[cached]\nset_cookie = \"keep\"\n").unwrap();
        let e = CachedConfig::load(Some(&path), &[])
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.starts_with(&format!(
                "{}:2:14: cached.set_cookie: must be",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn access_log_formats_parse() {
        use LogPart::{Text, Var};
        let LogFormat::Fields(c) = LogFormat::parse("combined").unwrap() else {
            panic!("combined is a field list");
        };
        assert_eq!(c.len(), 16);
        assert_eq!(c[0], Var(LogVar::RemoteAddr));
        assert_eq!(c[1], Text(" - ".into()));
        assert_eq!(c[10], Var(LogVar::BodyBytesSent));
        assert_eq!(c[15], Text("\"".into()));
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::parse("$status:$cache"),
            Ok(LogFormat::Fields(vec![
                Var(LogVar::Status),
                Text(":".into()),
                Var(LogVar::Cache)
            ]))
        );
        for bad in ["nginx", "", "$nope", "$ status", "$status\n", "$"] {
            assert!(LogFormat::parse(bad).is_err(), "{bad:?}");
        }
        for (n, v) in LogVar::ALL {
            assert_eq!(v.name(), *n);
        }
        let e = ProxyConfig::load(None, &flags(&[("proxy.access_log_format", "$site $x")]))
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("command line: --access-log-format: unknown variable $x"),
            "{e}"
        );
    }

    #[test]
    fn access_log_and_stats_allow_keys() {
        let p = ProxyConfig::load(None, &[]).unwrap();
        assert_eq!(p.access_log, None);
        assert_eq!((p.access_log_max_bytes, p.access_log_keep), (0, 5));
        assert_eq!(
            p.access_log_format,
            LogFormat::parse(LogFormat::COMBINED).unwrap()
        );
        let lo = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(p.stats_allow.iter().any(|n| n.contains(lo("127.0.0.1"))));
        assert!(p.stats_allow.iter().any(|n| n.contains(lo("::1"))));
        assert!(p
            .stats_allow
            .iter()
            .any(|n| n.contains(lo("::ffff:127.0.0.2"))));
        assert!(!p.stats_allow.iter().any(|n| n.contains(lo("10.0.0.1"))));
        let p = ProxyConfig::load(
            None,
            &flags(&[
                ("proxy.stats_allow", "10.0.0.0/8, 192.168.1.7"),
                ("proxy.access_log", "a.log"),
            ]),
        )
        .unwrap();
        assert_eq!(p.access_log, Some(PathBuf::from("a.log")));
        assert!(p.stats_allow.iter().any(|n| n.contains(lo("10.200.0.1"))));
        assert!(p.stats_allow.iter().any(|n| n.contains(lo("192.168.1.7"))));
        assert!(!p.stats_allow.iter().any(|n| n.contains(lo("192.168.1.8"))));
        assert!(!p.stats_allow.iter().any(|n| n.contains(lo("127.0.0.1"))));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(lo("8.8.8.8")) && !all.contains(lo("2001:db8::1")));
        // Host bits beside a prefix are allowed; the range is the network's.
        assert!(IpNet::parse("10.1.2.3/8").unwrap().contains(lo("10.9.9.9")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(lo("2001:db8:ffff::1")) && !v6.contains(lo("2001:db9::1")));
        assert!(!v6.contains(lo("10.0.0.1")));
        for (bad, why) in [
            ("x/8", "not an address"),
            ("10.0.0.0/", "bad prefix length"),
            ("::/129", "bad prefix length"),
            ("10.0.0.0/8/8", "bad prefix length"),
        ] {
            let e = IpNet::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = ProxyConfig::load(None, &flags(&[("proxy.stats_allow", "10.0.0.0/33")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stats-allow") && e.contains("prefix"), "{e}");
    }

    #[test]
    fn origin_urls() {
        let o = Origin::parse("http://127.0.0.1:19000").unwrap();
        assert_eq!(
            (o.scheme, o.host.as_str(), o.port),
            (Scheme::Http, "127.0.0.1", 19000)
        );
        assert_eq!(o.authority(), "127.0.0.1:19000");
        assert_eq!(o.base_url(), "http://127.0.0.1:19000");
        assert_eq!(o.url_for("/a?b"), "http://127.0.0.1:19000/a?b");
        let o = Origin::parse("http://Example.TEST/base/").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.prefix.as_str()),
            ("example.test", 80, "/base")
        );
        assert_eq!(o.url_for("/x"), "http://example.test:80/base/x");
        assert_eq!(o.host_header(), "example.test");
        assert_eq!(o.to_string(), "http://example.test:80/base");
        let o = Origin::parse("HTTPS://example.com").unwrap();
        assert_eq!(
            (o.scheme, o.port, o.prefix.as_str()),
            (Scheme::Https, 443, "")
        );
        assert_eq!(o.base_url(), "https://example.com:443");
        let o = Origin::parse("https://example.com:8443/").unwrap();
        assert_eq!((o.port, o.prefix.as_str()), (8443, ""));
        assert_eq!(o.host_header(), "example.com:8443");
        let o = Origin::parse("https://[2001:DB8::1]:8443/p").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("[2001:db8::1]", 8443));
        assert_eq!(o.authority(), "[2001:db8::1]:8443");
        let o = Origin::parse("http://[::1]").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("[::1]", 80));
        assert_eq!(o.host_header(), "[::1]");
        let o = Origin::parse("http://my_host.internal:81").unwrap();
        assert_eq!(o.host, "my_host.internal");
    }

    #[test]
    fn origin_urls_refused_say_why() {
        for (url, why) in [
            ("ftp://x", "scheme \"ftp\""),
            ("example.com", "must start with http:// or https://"),
            ("http://", "bad host"),
            ("http:///path", "bad host"),
            ("http://user:pw@host", "user info"),
            ("http://host/a?b=1", "query or fragment"),
            ("http://host/#top", "query or fragment"),
            ("http://ho st/", "white space"),
            ("http://host:0", "bad port"),
            ("http://host:65536", "bad port"),
            ("http://host:", "bad port"),
            ("http://host:8x", "bad port"),
            ("http://::1/", "in brackets"),
            ("http://[::1", "unclosed"),
            ("http://[::g]", "bad IPv6"),
            ("http://[::1]x", "junk after"),
            ("http://a..b", "empty label"),
            ("http://a%41.com", "not allowed"),
        ] {
            match Origin::parse(url) {
                Ok(o) => panic!("{url:?} parsed as {o:?}"),
                Err(e) => assert!(e.contains(why), "{url:?}: {e:?} lacks {why:?}"),
            }
        }
    }

    /// Writes `text` to a file of its own and loads it with `flags`.
    fn load_cached(name: &str, text: &str, f: &[(&str, &str)]) -> Result<CachedConfig, String> {
        let path = std::env::temp_dir().join(format!("cfg-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let r = CachedConfig::load(Some(&path), &flags(f)).map_err(|e| {
            let p = path.display().to_string();
            let e = e.to_string();
            assert!(e.starts_with(&p) || e.starts_with("command line"), "{e}");
            e.replacen(&p, "FILE", 1)
        });
        let _ = std::fs::remove_file(&path);
        r
    }

    /// `FILE:LINE:COL: rest` as `(Some((LINE, COL)), "FILE: rest")`.
    fn unplace(e: &str) -> (Option<(usize, usize)>, String) {
        let Some(rest) = e.strip_prefix("FILE:") else {
            return (None, e.to_string());
        };
        let mut parts = rest.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(l), Some(c), Some(tail)) => match (l.parse(), c.parse()) {
                (Ok(l), Ok(c)) => (Some((l, c)), format!("FILE:{tail}")),
                _ => (None, e.to_string()),
            },
            _ => (None, e.to_string()),
        }
    }

    const TWO_SITES: &str = r#"
[[site]]
hosts = ["www.example.com", "*.example.org"]
origins = ["https://10.0.0.1", "https://10.0.0.2:8443"]
host_header = "client"
tls_server_name = "Origin.Example.com"
balance = "uri-hash"
health = { path = "/healthz", interval_ms = 5000, timeout_ms = 500, rise = 4, fall = 5 }

[[site]]
name = "api"
hosts = ["api.example.com", "*.api.example.org", "[::1]"]
origins = "http://127.0.0.1:9000/v1/"
host_header = "backend.internal:8080"
balance = "least-connections"
health = { path = "/ping" }
"#;

    #[test]
    fn sites_load_with_every_key_and_their_defaults() {
        let c = load_cached("two", TWO_SITES, &[]).unwrap();
        assert_eq!(c.sites.len(), 2);
        let (a, b) = (&c.sites[0], &c.sites[1]);
        assert_eq!(a.name, "www.example.com");
        assert_eq!(a.hosts, ["www.example.com", "*.example.org"]);
        assert_eq!(a.origins.len(), 2);
        assert_eq!(a.origins[1].authority(), "10.0.0.2:8443");
        assert_eq!(a.host_header, HostHeader::Client);
        assert_eq!(a.tls_server_name.as_deref(), Some("origin.example.com"));
        assert!(a.tls_verify);
        assert_eq!(a.balance, Balance::UriHash);
        let h = a.health.as_ref().unwrap();
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(5), Duration::from_millis(500))
        );
        assert_eq!((h.rise, h.fall, h.path.as_str()), (4, 5, "/healthz"));
        assert_eq!(b.name, "api");
        assert_eq!(b.origins[0].prefix, "/v1");
        assert_eq!(
            b.host_header,
            HostHeader::Name("backend.internal:8080".into())
        );
        assert_eq!(b.balance, Balance::LeastConnections);
        let h = b.health.as_ref().unwrap();
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
        assert_eq!((h.rise, h.fall), (2, 3));
        assert!(!c.sites.iter().any(Site::is_default));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());

        let c = load_cached("min", "[[site]]\norigins = [\"http://o\"]\n", &[]).unwrap();
        let s = &c.sites[0];
        assert!(s.is_default() && s.name == "default");
        assert_eq!(s.host_header, HostHeader::Origin);
        assert_eq!(
            (s.balance, s.health.is_none(), s.tls_verify),
            (Balance::RoundRobin, true, true)
        );
        // A short interval brings the default timeout down with it.
        let c = load_cached(
            "fast",
            "[[site]]\norigins = [\"http://o\"]\nhealth = { path = \"/\", interval_ms = 300 }\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.sites[0].health.as_ref().unwrap().timeout,
            Duration::from_millis(300)
        );
    }

    #[test]
    fn site_errors_name_the_site_and_key() {
        let o = "origins = [\"http://o\"]\n";
        for (text, want) in [
            (format!("[[site]]\n{o}balance = \"random\"\n"), "FILE: site[0].balance: must be \"round-robin\", \"least-connections\" or \"uri-hash\" (got \"random\")"),
            (format!("[[site]]\n{o}\n[[site]]\nhosts = [\"a\"]\n{o}balance = 3\n"), "FILE: site[1].balance: expected a string, got 3"),
            (format!("[[site]]\n{o}hostz = [\"a\"]\n"), "FILE: site[0].hostz: unknown key (did you mean hosts?)"),
            (format!("[[site]]\n{o}health = {{ path = \"/\", rize = 2 }}\n"), "FILE: site[0].health.rize: unknown key"),
            (format!("[[site]]\n{o}health = {{ interval_ms = 100 }}\n"), "FILE: site[0].health.path: missing"),
            (format!("[[site]]\n{o}health = {{ path = \"healthz\" }}\n"), "FILE: site[0].health.path: must start with '/'"),
            (format!("[[site]]\n{o}health = {{ path = \"/\", rise = 0 }}\n"), "FILE: site[0].health.rise: must be in 1..=1000 (got 0)"),
            (format!("[[site]]\n{o}health = {{ path = \"/\", fall = 0 }}\n"), "FILE: site[0].health.fall: must be in"),
            (format!("[[site]]\n{o}health = {{ path = \"/\", interval_ms = 500, timeout_ms = 600 }}\n"), "FILE: site[0].health.timeout_ms: must be in 1ms..=500ms (interval_ms) (got 600ms)"),
            ("[[site]]\nhosts = [\"a\"]\n".to_string(), "FILE: site[0].origins: missing"),
            ("[[site]]\norigins = []\n".to_string(), "FILE: site[0].origins: missing"),
            ("[[site]]\norigins = [\"ftp://o\"]\n".to_string(), "FILE: site[0].origins: scheme \"ftp\""),
            (format!("[[site]]\n{o}\n[[site]]\n{o}"), "FILE: site[1].hosts: missing: site[0] is already the default site"),
            (format!("[[site]]\nhosts = [\"a.com\"]\n{o}\n[[site]]\nname = \"b\"\nhosts = [\"b.com\", \"a.com\"]\n{o}"), "FILE: site[1].hosts: \"a.com\" is already a host of site[0]"),
            (format!("[[site]]\nhosts = [\"a.com\", \"a.com\"]\n{o}"), "FILE: site[0].hosts: \"a.com\" is listed twice"),
            (format!("[[site]]\nhosts = [\"a.com\"]\n{o}\n[[site]]\nname = \"a.com\"\nhosts = [\"b.com\"]\n{o}"), "FILE: site[1].name: \"a.com\" is already the name of site[0]"),
            (format!("[[site]]\nname = \"my site\"\n{o}"), "FILE: site[0].name: must be"),
            (format!("[[site]]\nhosts = [\"WWW.example.com\"]\n{o}"), "FILE: site[0].hosts: \"WWW.example.com\" must be lowercase: \"www.example.com\""),
            (format!("[[site]]\nhosts = [\"www.*.com\"]\n{o}"), "FILE: site[0].hosts: \"www.*.com\": a wildcard is a whole first label"),
            (format!("[[site]]\nhosts = [\"*\"]\n{o}"), "FILE: site[0].hosts: \"*\": a wildcard"),
            (format!("[[site]]\nhosts = [\"a.com:8080\"]\n{o}"), "FILE: site[0].hosts: \"a.com:8080\": a host pattern has no port"),
            (format!("[[site]]\nhosts = [\"a.com.\"]\n{o}"), "FILE: site[0].hosts: \"a.com.\": empty label"),
            (format!("[[site]]\nhosts = [\"[::G]\"]\n{o}"), "FILE: site[0].hosts: \"[::G]\" is not a lowercase IPv6"),
            (format!("[[site]]\n{o}host_header = \"a b\"\n"), "FILE: site[0].host_header: must be \"client\", \"origin\" or a host[:port]"),
            (format!("[[site]]\n{o}tls_server_name = \"a/b\"\n"), "FILE: site[0].tls_server_name: not a host name"),
            (format!("[[site]]\n{o}tls_verify = \"no\"\n"), "FILE: site[0].tls_verify: expected true or false, got \"no\""),
            (format!("[[site]]\n{o}[cached]\norigin = \"http://x\"\n"), "FILE: cached.origin: site[0] is already the default site"),
            (format!("[[site]]\nname = \"default\"\nhosts = [\"a\"]\n{o}[cached]\norigin = \"http://x\"\n"), "FILE: cached.origin: makes a site named \"default\", but site[0]"),
            ("[cached]\ntls_ca_file = \"/nonexistent/ca.pem\"\n".to_string(), "FILE: cached.tls_ca_file: cannot read \"/nonexistent/ca.pem\""),
            ("[cached]\ntls_ca_file = \"/\"\n".to_string(), "FILE: cached.tls_ca_file: cannot read \"/\""),
        ] {
            let e = load_cached("err", &text, &[]).map(|c| c.sites).unwrap_err();
            let (place, e) = unplace(&e);
            assert!(place.is_some(), "{text}\n  gave {e} without a line and column");
            assert!(e.starts_with(want), "{text}\n  gave {e}\n  want {want}");
        }
        // The proxy reads the same file and lets cached judge the sites.
        let path = std::env::temp_dir().join(format!("cfg-{}-proxy.toml", std::process::id()));
        std::fs::write(&path, TWO_SITES).unwrap();
        let p = ProxyConfig::load(Some(&path), &[]);
        let _ = std::fs::remove_file(&path);
        assert!(p.is_ok());
    }

    #[test]
    fn origin_flags_make_or_replace_the_default_site() {
        // Repeated flags are the servers of one default site, in order.
        let c = CachedConfig::load(
            None,
            &flags(&[
                ("cached.origin", "http://127.0.0.1:9000"),
                ("cached.threads", "4"),
                ("cached.origin", "https://b.example:8443/p"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sites.len(), 1);
        let s = &c.sites[0];
        assert_eq!((s.name.as_str(), s.is_default()), ("default", true));
        assert_eq!(s.host_header, HostHeader::Origin);
        let urls: Vec<String> = s.origins.iter().map(|o| o.to_string()).collect();
        assert_eq!(urls, ["http://127.0.0.1:9000", "https://b.example:8443/p"]);
        assert_eq!(
            c.site_for(b"anything:81").map(|s| s.name.as_str()),
            Some("default")
        );
        let e = CachedConfig::load(
            None,
            &flags(&[
                ("cached.origin", "http://ok"),
                ("cached.origin", "http://x:0"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("command line: --origin: bad port"), "{e}");
        // "" (as `scripts/run.sh` may pass) is no origin.
        assert!(CachedConfig::load(None, &flags(&[("cached.origin", "")]))
            .unwrap()
            .sites
            .is_empty());

        // The file's cached.origin, as a string or a list; flags replace it.
        let file = "[cached]\norigin = [\"http://a\", \"http://b\"]\n";
        let c = load_cached("orig", file, &[]).unwrap();
        assert_eq!(c.sites[0].origins.len(), 2);
        let c = load_cached("orig", file, &[("cached.origin", "http://c")]).unwrap();
        assert_eq!(c.sites[0].origins, [Origin::parse("http://c").unwrap()]);
        let c = load_cached("orig", "[cached]\norigin = \"http://a\"\n", &[]).unwrap();
        assert_eq!(c.sites[0].origins[0].host, "a");

        // With [[site]] tables: a default one gets the flags' servers and keeps the rest...
        let file = format!("{TWO_SITES}\n[[site]]\nname = \"rest\"\norigins = [\"http://old\"]\nbalance = \"uri-hash\"\n");
        let c = load_cached("merge", &file, &[("cached.origin", "http://new")]).unwrap();
        assert_eq!(c.sites.len(), 3);
        let d = &c.sites[2];
        assert_eq!((d.name.as_str(), d.balance), ("rest", Balance::UriHash));
        assert_eq!(d.origins, [Origin::parse("http://new").unwrap()]);
        // ...and without one, the flags add a default site.
        let c = load_cached("add", TWO_SITES, &[("cached.origin", "http://new")]).unwrap();
        assert_eq!(c.sites.len(), 3);
        assert_eq!(
            c.site_for(b"unknown.net").map(|s| s.name.as_str()),
            Some("default")
        );
        assert_eq!(
            c.site_for(b"www.example.com").map(|s| s.name.as_str()),
            Some("www.example.com")
        );
    }

    #[test]
    fn tls_ca_file_must_be_readable_and_tls_verify_false_warns() {
        let ca = std::env::temp_dir().join(format!("cfg-{}-ca.pem", std::process::id()));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let c = CachedConfig::load(
            None,
            &flags(&[
                ("cached.tls_ca_file", ca.to_str().unwrap()),
                ("cached.origin", "https://a"),
            ]),
        );
        let _ = std::fs::remove_file(&ca);
        let c = c.unwrap();
        assert_eq!(c.tls_ca_file.as_deref(), Some(ca.as_path()));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let e = CachedConfig::load(
            None,
            &flags(&[("cached.tls_ca_file", ca.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("command line: --tls-ca-file: cannot read"),
            "{e}"
        );

        let c = load_cached(
            "noverify",
            "[[site]]\nname = \"lab\"\norigins = [\"https://a\"]\ntls_verify = false\n",
            &[],
        )
        .unwrap();
        assert!(!c.sites[0].tls_verify);
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("\"lab\"") && w[0].contains("tls_verify = false"),
            "{w:?}"
        );
        let c = load_cached(
            "plainsni",
            "[[site]]\norigins = [\"http://a\"]\ntls_server_name = \"a\"\n",
            &[],
        )
        .unwrap();
        assert!(c.warnings()[0].contains("no effect"), "{:?}", c.warnings());
    }

    #[test]
    fn the_repository_config_and_its_example_sites_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shmproxy.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(CachedConfig::load(Some(&path), &[])
            .unwrap()
            .sites
            .is_empty());
        ProxyConfig::load(Some(&path), &[]).unwrap();
        let (_, example) = text
            .split_once("# Example sites (uncomment to use):\n")
            .unwrap();
        let example: String = example
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = load_cached("example", &format!("{text}\n{example}"), &[]).unwrap();
        let names: Vec<&str> = c.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["www", "api", "lab"]);
        assert_eq!(c.site_for(b"a.example.org").unwrap().name, "www");
        assert_eq!(c.site_for(b"elsewhere").unwrap().name, "lab");
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    }

    #[test]
    fn site_for_prefers_exact_then_longest_wildcard_then_default() {
        let file = r#"
[[site]]
name = "exact"
hosts = ["www.example.org", "[::1]", "127.0.0.1"]
origins = ["http://a"]
[[site]]
name = "wild"
hosts = ["*.example.org"]
origins = ["http://b"]
[[site]]
name = "deeper"
hosts = ["*.eu.example.org"]
origins = ["http://c"]
"#;
        let c = load_cached("route", file, &[]).unwrap();
        let route = |h: &str| c.site_for(h.as_bytes()).map(|s| s.name.as_str());
        assert_eq!(route("www.example.org"), Some("exact"));
        assert_eq!(route("www.example.org:8080"), Some("exact"));
        assert_eq!(route("www.example.org."), Some("exact"));
        assert_eq!(route("WWW.Example.ORG"), Some("exact"));
        assert_eq!(route("[::1]"), Some("exact"));
        assert_eq!(route("[::1]:8080"), Some("exact"));
        assert_eq!(route("127.0.0.1:80"), Some("exact"));
        assert_eq!(route("a.example.org"), Some("wild"));
        assert_eq!(route("a.b.example.org"), Some("wild"));
        assert_eq!(route("eu.example.org"), Some("wild"));
        assert_eq!(route("x.eu.example.org"), Some("deeper"));
        assert_eq!(route("y.x.eu.example.org:443"), Some("deeper"));
        assert_eq!(route("example.org"), None);
        assert_eq!(route("badexample.org"), None);
        assert_eq!(route("www.example.org.evil.net"), None);
        assert_eq!(route(""), None);
        assert_eq!(route("[::2]"), None);

        // With a default site, whatever matches nothing goes there.
        let file = format!("{file}[[site]]\norigins = [\"http://d\"]\n");
        let c = load_cached("route-default", &file, &[]).unwrap();
        let route = |h: &str| c.site_for(h.as_bytes()).map(|s| s.name.as_str());
        assert_eq!(route("example.org"), Some("default"));
        assert_eq!(route(""), Some("default"));
        assert_eq!(route("x.eu.example.org"), Some("deeper"));
        assert_eq!(route("www.example.org"), Some("exact"));
    }

    #[test]
    fn without_config_the_env_then_the_default_file_then_built_in_defaults() {
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(
            config_file(env("/x/a.toml"), true),
            (Some(PathBuf::from("/x/a.toml")), FileOrigin::Env)
        );
        assert_eq!(config_file(env(""), true), (None, FileOrigin::EnvEmpty));
        assert_eq!(
            config_file(None, true),
            (
                Some(PathBuf::from(DEFAULT_CONFIG_FILE)),
                FileOrigin::Default
            )
        );
        assert_eq!(config_file(None, false), (None, FileOrigin::NoDefault));
        let cl = CommandLine {
            file_origin: FileOrigin::NoDefault,
            ..CommandLine::default()
        };
        assert_eq!(
            cl.describe(),
            "built-in defaults (no /etc/shmproxy/shmproxy.toml)"
        );
    }
}

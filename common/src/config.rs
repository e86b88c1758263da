//! Configuration of both daemons: one TOML file (top-level `instance`, sections `[proxy]` and
//! `[cached]`), overridden by command-line flags. Flags are applied to the same table before
//! it is deserialised, so a flag and a key share one parser and one set of checks.
//!
//! Errors name their source and key (`shmproxy.toml: proxy.segments: must be ≥ 1 (got 0)`);
//! binaries exit with status 2 on them.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    instance: Option<String>,
    #[serde(default)]
    proxy: ProxyFile,
    #[serde(default)]
    cached: CachedFile,
}

/// `[proxy]` keys.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    listen: Option<String>,
    workers: Option<u64>,
    threads: Option<u64>,
    pollers: Option<u64>,
    accept_coalesce_us: Option<u64>,
    segments: Option<u64>,
    segment_size: Option<u64>,
    chunk_slots: Option<u64>,
    pool_wait_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    send_timeout_ms: Option<u64>,
    min_send_rate: Option<u64>,
    min_recv_rate: Option<u64>,
    min_rate_grace_ms: Option<u64>,
    client_wait_threads: Option<u64>,
    cached_timeout_ms: Option<u64>,
    max_header_bytes: Option<u64>,
    max_headers: Option<u64>,
    max_body_bytes: Option<u64>,
    max_connections: Option<u64>,
    l1_capacity: Option<u64>,
    l1_max_object_size: Option<u64>,
    access_log: Option<String>,
    access_log_max_bytes: Option<u64>,
    access_log_keep: Option<u64>,
    stats_allow: Option<OneOrMany>,
    trusted_proxies: Option<OneOrMany>,
}

/// A key that takes a list, given as a TOML array or as one comma-separated string (flags).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
            OneOrMany::Many(v) => v.iter().map(|x| x.trim().to_string()).collect(),
        }
    }
}

/// An address range (`127.0.0.0/8`, `::1`, `10.1.2.3`), for access lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("not an address or CIDR range: {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix length in {s:?}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, w1), (x, w2)) = (bits(self.addr), bits(ip));
        if w1 != w2 {
            return false;
        }
        let shift = w1 - u32::from(self.prefix);
        shift >= w1 || (net >> shift) == (x >> shift)
    }
}

/// `[cached]` keys.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CachedFile {
    root: Option<String>,
    origin: Option<String>,
    threads: Option<u64>,
    capacity: Option<u64>,
    max_object_size: Option<u64>,
    connect_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    upstream_pool: Option<u64>,
    queue_capacity: Option<u64>,
    revalidate_ms: Option<u64>,
    max_waiters: Option<u64>,
    heuristic_ttl_ms: Option<u64>,
    set_cookie: Option<String>,
}

/// The proxy's settings (master and workers).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub instance: String,
    /// Address to listen on.
    pub listen: SocketAddr,
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
    /// Bytes of each worker's L1 cache of hot small objects (0 disables it).
    pub l1_capacity: u64,
    /// Largest object a worker keeps in its L1.
    pub l1_max_object_size: u64,
    /// Access log file (Combined Log Format plus cache outcome, upstream status and duration);
    /// `None` (key absent or "") writes none. Relative paths start at the working directory.
    pub access_log: Option<PathBuf>,
    /// The access log is rotated when it reaches this many bytes (0: never).
    pub access_log_max_bytes: u64,
    /// Rotated access logs kept: `FILE.1` (newest) … `FILE.N`.
    pub access_log_keep: u32,
    /// Clients allowed to read `/__shmproxy/` (stats, metrics, dashboard); loopback by default.
    pub stats_allow: Vec<IpNet>,
    /// Front ends whose `X-Forwarded-*`/`Forwarded` fields are passed on; from any other
    /// client they are dropped (the origin gets shmproxy's own). Empty by default.
    pub trusted_proxies: Vec<IpNet>,
}

/// `cached`'s settings.
#[derive(Clone, Debug)]
pub struct CachedConfig {
    pub instance: String,
    /// Document root served when no origin is set.
    pub root: PathBuf,
    /// Sites fronted (origin mode when not empty). SHIM: replaced by the config branch.
    pub sites: Vec<Site>,
    pub tls_ca_file: Option<PathBuf>,
    /// Longest an idle upstream connection is kept for reuse.
    pub upstream_idle: Duration,
    /// Receiver threads (each serves one transfer at a time).
    pub threads: u32,
    /// Bytes of the L2 cache.
    pub capacity: u64,
    /// Larger objects stream through without being stored.
    pub max_object_size: u64,
    pub connect_timeout: Duration,
    /// Longest silence from the origin while reading its answer (504 or abort after).
    pub read_timeout: Duration,
    /// Idle upstream connections kept.
    pub upstream_pool: usize,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// SHIM
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub prefix: String,
}

impl Origin {
    pub fn parse(url: &str) -> Result<Origin, String> {
        let (scheme, rest, port) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r, 80)
        } else if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r, 443)
        } else {
            return Err("must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.ends_with(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            _ => (authority, port),
        };
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
    pub fn base_url(&self) -> String {
        let s = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{s}://{}:{}", self.host, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    Client,
    Origin,
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    UriHash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Debug)]
pub struct Site {
    pub name: String,
    pub hosts: Vec<String>,
    pub origins: Vec<Origin>,
    pub host_header: HostHeader,
    pub tls_server_name: Option<String>,
    pub tls_verify: bool,
    pub balance: Balance,
    pub health: Option<Health>,
}

impl CachedConfig {
    pub fn site_for(&self, host: &[u8]) -> Option<&Site> {
        let name = String::from_utf8_lossy(host);
        let name = name.split(':').next().unwrap_or("");
        self.sites
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == name))
            .or_else(|| self.sites.iter().find(|s| s.hosts.is_empty()))
    }
}

/// Where a value came from, for error messages.
struct Source<'a> {
    file: &'a str,
    flags: &'a [(String, String)],
}

impl Source<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> ConfigError {
        let flag = key.rsplit('.').next().unwrap_or(key).replace('_', "-");
        if self
            .flags
            .iter()
            .any(|(k, _)| k.rsplit('.').next() == key.rsplit('.').next())
        {
            ConfigError(format!("command line: --{flag}: {msg}"))
        } else {
            ConfigError(format!("{}: {key}: {msg}", self.file))
        }
    }
}

/// Reads `file` (if any) and applies `flags` (`(section.key, value)` pairs, or `instance`).
fn load_table(
    file: Option<&Path>,
    flags: &[(String, String)],
) -> Result<(FileConfig, String), ConfigError> {
    let (name, mut table) = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("{}: {e}", p.display())))?;
            let t: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                ConfigError(format!("{}: {}", p.display(), e.message()))
            })?;
            (p.display().to_string(), t)
        }
        None => ("defaults".to_string(), toml::Table::new()),
    };
    for (key, value) in flags {
        let v = match value.parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(value.clone()),
        };
        match key.split_once('.') {
            Some((section, k)) => {
                let sec = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = sec {
                    t.insert(k.to_string(), v);
                }
            }
            None => {
                table.insert(key.clone(), v);
            }
        }
    }
    let cfg: FileConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let msg = e.message().to_string();
            let src = Source { file: &name, flags };
            match msg.split('`').nth(1) {
                Some(key) if msg.starts_with("unknown field") => src.err(key, "unknown key"),
                _ => ConfigError(format!("{name}: {msg}")),
            }
        })?;
    Ok((cfg, name))
}

fn instance(cfg: &FileConfig, src: &Source) -> Result<String, ConfigError> {
    let instance = cfg.instance.clone().unwrap_or_else(|| "shmproxy".into());
    if !crate::names::valid_instance(&instance) {
        return Err(src.err(
            "instance",
            format!("must be 1..=32 of [A-Za-z0-9_-] (got {instance:?})"),
        ));
    }
    Ok(instance)
}

fn ranged(
    src: &Source,
    key: &str,
    v: Option<u64>,
    default: u64,
    lo: u64,
    hi: u64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return Err(src.err(key, format!("must be in {lo}..={hi} (got {v})")));
    }
    Ok(v)
}

fn ms(src: &Source, key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(ranged(
        src, key, v, default, 1, 86_400_000,
    )?))
}

impl ProxyConfig {
    pub fn load(
        file: Option<&Path>,
        flags: &[(String, String)],
    ) -> Result<ProxyConfig, ConfigError> {
        let (cfg, name) = load_table(file, flags)?;
        let src = Source { file: &name, flags };
        let p = &cfg.proxy;
        let listen = p.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen
            .parse()
            .map_err(|_| src.err("proxy.listen", format!("not an ADDR:PORT (got {listen:?})")))?;
        let pool = crate::pool::MIN_SEGMENT_SIZE as u64..=crate::pool::MAX_SEGMENT_SIZE as u64;
        let workers = ranged(&src, "proxy.workers", p.workers, 2, 1, 64)? as u32;
        let threads = ranged(&src, "proxy.threads", p.threads, 64, 1, 1024)? as u32;
        let segments = ranged(&src, "proxy.segments", p.segments, 128, 1, 4096)? as u32;
        // Default: half the threads, and no more than half the segments over all workers.
        let auto_waits = (threads / 2).min(segments / (2 * workers)).max(1);
        let client_wait_threads = ranged(
            &src,
            "proxy.client_wait_threads",
            p.client_wait_threads,
            u64::from(auto_waits),
            1,
            u64::from(threads),
        )? as u32;
        Ok(ProxyConfig {
            instance: instance(&cfg, &src)?,
            listen,
            workers,
            threads,
            pollers: ranged(&src, "proxy.pollers", p.pollers, 1, 1, 1024)? as u32,
            accept_coalesce: Duration::from_micros(ranged(
                &src,
                "proxy.accept_coalesce_us",
                p.accept_coalesce_us,
                500,
                0,
                100_000,
            )?),
            segments,
            segment_size: ranged(
                &src,
                "proxy.segment_size",
                p.segment_size,
                256 << 10,
                *pool.start(),
                *pool.end(),
            )? as usize,
            chunk_slots: ranged(
                &src,
                "proxy.chunk_slots",
                p.chunk_slots,
                2,
                2,
                crate::pool::MAX_SLOTS as u64,
            )? as u32,
            pool_wait: ms(&src, "proxy.pool_wait_ms", p.pool_wait_ms, 1000)?,
            header_timeout: ms(&src, "proxy.header_timeout_ms", p.header_timeout_ms, 10_000)?,
            idle_timeout: ms(&src, "proxy.idle_timeout_ms", p.idle_timeout_ms, 60_000)?,
            send_timeout: ms(&src, "proxy.send_timeout_ms", p.send_timeout_ms, 30_000)?,
            min_send_rate: ranged(
                &src,
                "proxy.min_send_rate",
                p.min_send_rate,
                500,
                0,
                1 << 40,
            )?,
            min_recv_rate: ranged(
                &src,
                "proxy.min_recv_rate",
                p.min_recv_rate,
                500,
                0,
                1 << 40,
            )?,
            min_rate_grace: ms(&src, "proxy.min_rate_grace_ms", p.min_rate_grace_ms, 10_000)?,
            client_wait_threads,
            cached_timeout: ms(&src, "proxy.cached_timeout_ms", p.cached_timeout_ms, 30_000)?,
            max_header_bytes: ranged(
                &src,
                "proxy.max_header_bytes",
                p.max_header_bytes,
                16 << 10,
                1024,
                1 << 20,
            )? as usize,
            max_headers: ranged(&src, "proxy.max_headers", p.max_headers, 100, 8, 1000)? as usize,
            max_body_bytes: ranged(
                &src,
                "proxy.max_body_bytes",
                p.max_body_bytes,
                1 << 30,
                0,
                u64::MAX,
            )?,
            max_connections: ranged(
                &src,
                "proxy.max_connections",
                p.max_connections,
                10_000,
                1,
                1 << 20,
            )? as usize,
            l1_capacity: ranged(
                &src,
                "proxy.l1_capacity",
                p.l1_capacity,
                16 << 20,
                0,
                u64::MAX,
            )?,
            l1_max_object_size: ranged(
                &src,
                "proxy.l1_max_object_size",
                p.l1_max_object_size,
                1 << 20,
                0,
                u64::MAX,
            )?,
            access_log: p
                .access_log
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            access_log_max_bytes: ranged(
                &src,
                "proxy.access_log_max_bytes",
                p.access_log_max_bytes,
                64 << 20,
                0,
                u64::MAX,
            )?,
            access_log_keep: ranged(&src, "proxy.access_log_keep", p.access_log_keep, 5, 1, 1000)?
                as u32,
            stats_allow: p
                .stats_allow
                .as_ref()
                .map_or_else(
                    || vec!["127.0.0.0/8".to_string(), "::1".to_string()],
                    OneOrMany::items,
                )
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| IpNet::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| src.err("proxy.stats_allow", e))?,
            trusted_proxies: p
                .trusted_proxies
                .as_ref()
                .map(OneOrMany::items)
                .unwrap_or_default()
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| IpNet::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| src.err("proxy.trusted_proxies", e))?,
        })
    }
}

impl CachedConfig {
    pub fn load(
        file: Option<&Path>,
        flags: &[(String, String)],
    ) -> Result<CachedConfig, ConfigError> {
        let (cfg, name) = load_table(file, flags)?;
        let src = Source { file: &name, flags };
        let c = &cfg.cached;
        let sites = match c.origin.as_deref() {
            None | Some("") => Vec::new(),
            Some(url) => vec![Site {
                name: "default".into(),
                hosts: Vec::new(),
                origins: vec![Origin::parse(url).map_err(|e| src.err("cached.origin", e))?],
                host_header: HostHeader::Origin,
                tls_server_name: None,
                tls_verify: true,
                balance: Balance::RoundRobin,
                health: None,
            }],
        };
        let msg_max = crate::mq::kernel_msg_max().unwrap_or(10) as u64;
        let queue_capacity = c
            .queue_capacity
            .unwrap_or(crate::mq::DEFAULT_CAPACITY as u64);
        if queue_capacity > msg_max {
            return Err(src.err(
                "cached.queue_capacity",
                format!("{queue_capacity} exceeds the kernel's fs.mqueue.msg_max ({msg_max}); lower it or raise the sysctl"),
            ));
        }
        let capacity = ranged(&src, "cached.capacity", c.capacity, 256 << 20, 0, u64::MAX)?;
        Ok(CachedConfig {
            instance: instance(&cfg, &src)?,
            root: PathBuf::from(c.root.clone().unwrap_or_else(|| "www".into())),
            sites,
            tls_ca_file: None,
            upstream_idle: Duration::from_secs(4),
            threads: ranged(&src, "cached.threads", c.threads, 256, 1, 4096)? as u32,
            capacity,
            max_object_size: ranged(
                &src,
                "cached.max_object_size",
                c.max_object_size,
                8 << 20,
                0,
                u64::MAX,
            )?,
            connect_timeout: ms(
                &src,
                "cached.connect_timeout_ms",
                c.connect_timeout_ms,
                3000,
            )?,
            read_timeout: ms(&src, "cached.read_timeout_ms", c.read_timeout_ms, 30_000)?,
            upstream_pool: ranged(&src, "cached.upstream_pool", c.upstream_pool, 64, 1, 4096)?
                as usize,
            queue_capacity: ranged(
                &src,
                "cached.queue_capacity",
                Some(queue_capacity),
                10,
                1,
                msg_max,
            )? as usize,
            revalidate: ms(&src, "cached.revalidate_ms", c.revalidate_ms, 1000)?,
            max_waiters: ranged(&src, "cached.max_waiters", c.max_waiters, 1024, 0, 1 << 20)?
                as usize,
            heuristic_floor: Duration::from_millis(ranged(
                &src,
                "cached.heuristic_ttl_ms",
                c.heuristic_ttl_ms,
                0,
                0,
                31_536_000_000,
            )?),
            set_cookie: match c.set_cookie.as_deref() {
                None => SetCookie::Pass,
                Some(v) => SetCookie::parse(v).map_err(|e| src.err("cached.set_cookie", e))?,
            },
        })
    }
}

/// A daemon's command line: `--config FILE`, flags that set config keys, and switches.
#[derive(Clone, Debug, Default)]
pub struct CommandLine {
    pub file: Option<PathBuf>,
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
    Ok(Some(cl))
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
        assert_eq!(p.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(p.instance, "shmproxy");
        let c = CachedConfig::load(None, &[]).unwrap();
        assert_eq!(c.root, PathBuf::from("www"));
        assert!(c.origin.is_none());
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
            e.starts_with(&format!("{}: cached.set_cookie: must be", path.display())),
            "{e}"
        );
    }

    #[test]
    fn access_log_and_stats_allow_keys() {
        let p = ProxyConfig::load(None, &[]).unwrap();
        assert_eq!(p.access_log, None);
        assert_eq!((p.access_log_max_bytes, p.access_log_keep), (64 << 20, 5));
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
        let e = ProxyConfig::load(None, &flags(&[("proxy.stats_allow", "10.0.0.0/33")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stats-allow") && e.contains("prefix"), "{e}");
    }

    #[test]
    fn origin_urls() {
        let o = Origin::parse("http://127.0.0.1:19000").unwrap();
        assert_eq!(o.authority, "127.0.0.1:19000");
        assert_eq!(o.url_for("/a?b"), "http://127.0.0.1:19000/a?b");
        let o = Origin::parse("http://example.test/base/").unwrap();
        assert_eq!(o.authority, "example.test:80");
        assert_eq!(o.url_for("/x"), "http://example.test:80/base/x");
        assert!(Origin::parse("https://x").is_err());
        assert!(Origin::parse("http://").is_err());
    }
}

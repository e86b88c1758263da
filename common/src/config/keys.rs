//! The one list of configuration keys (type, range, default) and the reader that turns a
//! TOML file plus command-line flags into checked values. Every default lives in [`KEYS`]:
//! the loaders in `config.rs` read it, and tests hold `shmproxy.toml`, the README table and
//! the `--help` texts to it.
//!
//! Error formats (one line each):
//! - a value in the file: `FILE:LINE:COL: KEY: MESSAGE` (`shmproxy.toml:14:11:
//!   proxy.workers: expected an integer, got "four"`), LINE and COL of the value (of the
//!   element for one bad element of a list, of the key for an unknown key, of the enclosing
//!   table for a missing one), and for an unknown key a hint (`(did you mean capacity?)`);
//! - a flag: `command line: --FLAG: MESSAGE` (`command line: --workers: expected an
//!   integer, got "four"`);
//! - a default that does not fit (a computed bound): `FILE: KEY: MESSAGE`, FILE being
//!   `defaults` when no file was given.
//!
//! Units. A size is a whole number of bytes, or a number with a unit: `b`, `k`/`kb`/`kib`,
//! `m`/`mb`/`mib`, `g`/`gb`/`gib`, `t`/`tb`/`tib`, in any case, all powers of 1024 as in
//! nginx and Varnish (`1MB` = `1MiB` = 1048576). A duration is a whole number in the key's
//! unit (milliseconds for `*_ms` keys, microseconds for `*_us`), or one or more numbers with
//! units `us`, `ms`, `s`, `m`, `h`, `d` (`250ms`, `5s`, `1m30s`); it must come out a whole
//! number of the key's unit.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::error::ConfigError;

/// How a key's value is read.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    /// A whole number in `lo..=hi`.
    Int {
        lo: u64,
        hi: u64,
    },
    /// Bytes (or bytes per second), with or without a unit.
    Size {
        lo: u64,
        hi: u64,
    },
    /// Milliseconds, or a duration with units; bounds in milliseconds.
    Ms {
        lo: u64,
        hi: u64,
    },
    /// Microseconds, or a duration with units; bounds in microseconds.
    Us {
        lo: u64,
        hi: u64,
    },
    Str,
    Bool,
    /// A string or a list of strings; from a flag, `split` cuts one string at commas.
    List {
        split: bool,
    },
    /// One listening address or a list (see [`parse_listen`]).
    Listen,
    /// A section: a table of keys.
    Table,
    /// An array of tables (`[[site]]`).
    Tables,
}

/// One configuration key.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The full key; keys of `[[site]]` tables are `site.KEY` (`site[1].KEY` in messages).
    pub name: &'static str,
    pub ty: Ty,
    /// The default as written in TOML; `None`: unset by default, or computed from other keys
    /// (see the doc comments of the config structs).
    pub default: Option<&'static str>,
}

const MAX: u64 = u64::MAX;
const DAY_MS: u64 = 86_400_000;

const fn key(name: &'static str, ty: Ty, default: Option<&'static str>) -> Key {
    Key { name, ty, default }
}
const fn int(lo: u64, hi: u64) -> Ty {
    Ty::Int { lo, hi }
}
const fn size(lo: u64, hi: u64) -> Ty {
    Ty::Size { lo, hi }
}
const fn ms(lo: u64, hi: u64) -> Ty {
    Ty::Ms { lo, hi }
}

/// Keys that existed once, with what replaced them: a file that still sets one is refused
/// with this message (`FILE:LINE:COL: KEY: MESSAGE`), not as an unknown key.
pub const RETIRED: &[(&str, &str)] = &[
    (
        "proxy.l1_capacity",
        "retired: hits are served from the shared arena sized by cached.capacity",
    ),
    (
        "proxy.l1_max_object_size",
        "retired: the shared arena stores objects up to cached.max_object_size",
    ),
];

/// Every key both daemons know, with its default.
pub const KEYS: &[Key] = &[
    key("instance", Ty::Str, Some("\"shmproxy\"")),
    key("node", Ty::Str, None),
    key("proxy", Ty::Table, None),
    key("proxy.listen", Ty::Listen, Some("\"127.0.0.1:8080\"")),
    key("proxy.workers", int(1, 64), Some("2")),
    key("proxy.threads", int(1, 1024), Some("64")),
    key("proxy.pollers", int(1, 1024), Some("1")),
    key(
        "proxy.accept_coalesce_us",
        Ty::Us { lo: 0, hi: 100_000 },
        Some("500"),
    ),
    key("proxy.segments", int(1, 4096), Some("128")),
    key(
        "proxy.segment_size",
        size(
            crate::pool::MIN_SEGMENT_SIZE as u64,
            crate::pool::MAX_SEGMENT_SIZE as u64,
        ),
        Some("262144"),
    ),
    key(
        "proxy.chunk_slots",
        int(2, crate::pool::MAX_SLOTS as u64),
        Some("2"),
    ),
    key("proxy.pool_wait_ms", ms(1, DAY_MS), Some("1000")),
    key("proxy.header_timeout_ms", ms(1, DAY_MS), Some("10000")),
    key("proxy.idle_timeout_ms", ms(1, DAY_MS), Some("60000")),
    key("proxy.send_timeout_ms", ms(1, DAY_MS), Some("30000")),
    key("proxy.min_send_rate", size(0, 1 << 40), Some("500")),
    key("proxy.min_recv_rate", size(0, 1 << 40), Some("500")),
    key("proxy.min_rate_grace_ms", ms(1, DAY_MS), Some("10000")),
    key("proxy.client_wait_threads", int(1, 1024), None),
    key("proxy.cached_timeout_ms", ms(1, DAY_MS), Some("30000")),
    key("proxy.max_header_bytes", size(1024, 1 << 20), Some("16384")),
    key("proxy.max_headers", int(8, 1000), Some("100")),
    key("proxy.max_body_bytes", size(0, MAX), Some("1073741824")),
    key("proxy.max_connections", int(1, 1 << 20), Some("10000")),
    key("proxy.access_log", Ty::Str, None),
    key("proxy.access_log_format", Ty::Str, Some("\"combined\"")),
    key("proxy.access_log_max_bytes", size(0, MAX), Some("0")),
    key("proxy.access_log_keep", int(1, 1000), Some("5")),
    key(
        "proxy.stats_allow",
        Ty::List { split: true },
        Some("[\"127.0.0.0/8\", \"::1\"]"),
    ),
    key(
        "proxy.trusted_proxies",
        Ty::List { split: true },
        Some("[]"),
    ),
    key("proxy.drain_ms", ms(0, DAY_MS), Some("0")),
    key("cached", Ty::Table, None),
    key("cached.root", Ty::Str, Some("\"/var/www/shmproxy\"")),
    key("cached.origin", Ty::List { split: false }, None),
    key("cached.tls_ca_file", Ty::Str, None),
    key("cached.threads", int(1, 4096), Some("256")),
    key("cached.capacity", size(0, MAX), Some("268435456")),
    key("cached.max_object_size", size(0, MAX), Some("8388608")),
    key("cached.connect_timeout_ms", ms(1, DAY_MS), Some("3000")),
    key("cached.read_timeout_ms", ms(1, DAY_MS), Some("30000")),
    key("cached.upstream_pool", int(1, 4096), Some("64")),
    key("cached.upstream_idle_ms", ms(1, DAY_MS), Some("4000")),
    // The upper bound is the kernel's fs.mqueue.msg_max, checked at load.
    key("cached.queue_capacity", int(1, MAX), Some("10")),
    key("cached.revalidate_ms", ms(1, DAY_MS), Some("1000")),
    key("cached.max_waiters", int(0, 1 << 20), Some("1024")),
    key("cached.heuristic_ttl_ms", ms(0, 365 * DAY_MS), Some("0")),
    key("cached.grace_ms", ms(0, 365 * DAY_MS), Some("0")),
    key("cached.keep_ms", ms(0, 365 * DAY_MS), Some("86400000")),
    key(
        "cached.targeted_cache_control",
        Ty::List { split: true },
        Some("[\"CDN-Cache-Control\"]"),
    ),
    key("cached.strip_targeted", Ty::Bool, Some("false")),
    key("cached.set_cookie", Ty::Str, Some("\"pass\"")),
    key("cached.purge_forward", Ty::Bool, Some("false")),
    key("site", Ty::Tables, None),
    key("site.name", Ty::Str, None),
    key("site.hosts", Ty::List { split: false }, None),
    key("site.origins", Ty::List { split: false }, None),
    key("site.host_header", Ty::Str, None),
    key("site.tls_server_name", Ty::Str, None),
    key("site.tls_verify", Ty::Bool, Some("true")),
    key("site.balance", Ty::Str, Some("\"round-robin\"")),
    key("site.health", Ty::Table, None),
    key("site.health.path", Ty::Str, None),
    key("site.health.interval_ms", ms(10, DAY_MS), Some("2000")),
    // At most the interval: a shorter interval brings the default down with it.
    key("site.health.timeout_ms", ms(1, DAY_MS), Some("1000")),
    key("site.health.rise", int(1, 1000), Some("2")),
    key("site.health.fall", int(1, 1000), Some("3")),
];

/// Keys whose default is computed from other keys (documented in words).
pub const COMPUTED: &[&str] = &[
    "node",
    "proxy.client_wait_threads",
    "site.name",
    "site.host_header",
];

/// Flags that may be given more than once: their values make one list, in order, which
/// replaces the file's value.
const REPEATABLE: &[&str] = &["cached.origin", "proxy.listen"];

/// The key `name` (`site[2].health.rise` is `site.health.rise`).
pub fn lookup(name: &str) -> Option<&'static Key> {
    let plain = lookup_name(name);
    KEYS.iter().find(|k| k.name == plain)
}

/// A value as read, before its key's type judges it.
#[derive(Clone, Debug)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Val>),
    /// A table, date or anything else no key takes as a plain value ("a table").
    Other(&'static str),
    /// A flag's text, read as the key's type says.
    Flag(String),
    /// A repeatable flag's values.
    Flags(Vec<String>),
}

impl Val {
    /// For "got …" in messages.
    fn describe(&self) -> String {
        match self {
            Val::Str(s) | Val::Flag(s) => format!("{s:?}"),
            Val::Int(n) => n.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::List(_) | Val::Flags(_) => "a list".into(),
            Val::Other(what) => (*what).into(),
        }
    }
}

/// A checked value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Typed {
    /// An integer, a size in bytes, or a duration in the key's unit (ms or µs).
    Int(u64),
    Str(String),
    Bool(bool),
    List(Vec<String>),
    Addrs(Vec<SocketAddr>),
    /// Tables are walked, not read as values.
    Table,
}

/// Reads `v` as `ty` says. The message says what was expected.
pub(super) fn typed(ty: Ty, v: &Val) -> Result<Typed, String> {
    let got = || v.describe();
    match ty {
        Ty::Int { lo, hi } => {
            let n = match v {
                Val::Int(n) => *n,
                Val::Flag(s) => s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("expected an integer, got {}", got()))?,
                _ => return Err(format!("expected an integer, got {}", got())),
            };
            within(n, lo, hi, &|n| n.to_string())
        }
        Ty::Size { lo, hi } => {
            let what = "expected a size (bytes, or a number with a unit: 512k, 64KiB, 256MiB, 1g)";
            let n = match v {
                Val::Int(n) => *n,
                Val::Str(s) | Val::Flag(s) => match parse_size(s) {
                    Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
                    Err(why) => return Err(format!("{what}, got {}: {why}", got())),
                },
                _ => return Err(format!("{what}, got {}", got())),
            };
            within(n, lo, hi, &fmt_size)
        }
        Ty::Ms { lo, hi } | Ty::Us { lo, hi } => {
            let (unit_us, what) = match ty {
                Ty::Ms { .. } => (
                    1000,
                    "expected a duration (milliseconds, or a number with a unit: 250ms, 5s, 2m, 1h)",
                ),
                _ => (
                    1,
                    "expected a duration (microseconds, or a number with a unit: 500us, 2ms)",
                ),
            };
            let n = match v {
                Val::Int(n) => *n,
                Val::Str(s) | Val::Flag(s) => match parse_duration_us(s, unit_us) {
                    Ok(us) if us / unit_us * unit_us == us => {
                        i64::try_from(us / unit_us).unwrap_or(i64::MAX)
                    }
                    Ok(_) => {
                        return Err(format!(
                            "{what}, got {}: not a whole number of {}",
                            got(),
                            if unit_us == 1000 {
                                "milliseconds"
                            } else {
                                "microseconds"
                            }
                        ))
                    }
                    Err(why) => return Err(format!("{what}, got {}: {why}", got())),
                },
                _ => return Err(format!("{what}, got {}", got())),
            };
            within(n, lo, hi, &|n| fmt_duration_us(n.saturating_mul(unit_us)))
        }
        Ty::Str => match v {
            Val::Str(s) | Val::Flag(s) => Ok(Typed::Str(s.clone())),
            _ => Err(format!("expected a string, got {}", got())),
        },
        Ty::Bool => match v {
            Val::Bool(b) => Ok(Typed::Bool(*b)),
            Val::Flag(s) if s == "true" || s == "false" => Ok(Typed::Bool(s == "true")),
            _ => Err(format!("expected true or false, got {}", got())),
        },
        Ty::List { split } => {
            let one = |s: &str| -> Vec<String> {
                if split {
                    s.split(',').map(|x| x.trim().to_string()).collect()
                } else {
                    vec![s.trim().to_string()]
                }
            };
            let items: Vec<String> = match v {
                Val::Str(s) => one(s),
                Val::Flag(s) => one(s),
                Val::Flags(v) => v.iter().flat_map(|s| one(s)).collect(),
                Val::List(items) => items
                    .iter()
                    .map(|i| match i {
                        Val::Str(s) => Ok(s.trim().to_string()),
                        other => Err(format!(
                            "expected a string or a list of strings, got {} in the list",
                            other.describe()
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(format!(
                        "expected a string or a list of strings, got {}",
                        got()
                    ))
                }
            };
            Ok(Typed::List(
                items.into_iter().filter(|s| !s.is_empty()).collect(),
            ))
        }
        Ty::Listen => {
            let what = "expected an address (127.0.0.1:8080, [::1]:8080, localhost:8080, :8080) or a list of them";
            let items: Vec<String> = match v {
                Val::Int(n) => vec![n.to_string()],
                Val::Str(s) => vec![s.clone()],
                Val::Flag(s) => s.split(',').map(str::to_string).collect(),
                Val::Flags(v) => v
                    .iter()
                    .flat_map(|s| s.split(','))
                    .map(str::to_string)
                    .collect(),
                Val::List(items) => items
                    .iter()
                    .map(|i| match i {
                        Val::Str(s) => Ok(s.clone()),
                        Val::Int(n) => Ok(n.to_string()),
                        other => Err(format!("{what}, got {} in the list", other.describe())),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(format!("{what}, got {}", got())),
            };
            let mut addrs: Vec<SocketAddr> = Vec::with_capacity(items.len());
            for s in &items {
                let a = parse_listen(s).map_err(|why| format!("{what}, got {s:?}: {why}"))?;
                if addrs.contains(&a) {
                    return Err(format!("{a} is listed twice"));
                }
                addrs.push(a);
            }
            if addrs.is_empty() {
                return Err(format!("{what}, got an empty list"));
            }
            if addrs.len() > crate::fdpass::MAX_FDS {
                return Err(format!(
                    "at most {} addresses (got {})",
                    crate::fdpass::MAX_FDS,
                    addrs.len()
                ));
            }
            Ok(Typed::Addrs(addrs))
        }
        Ty::Table | Ty::Tables => Ok(Typed::Table),
    }
}

fn within(n: i64, lo: u64, hi: u64, show: &dyn Fn(u64) -> String) -> Result<Typed, String> {
    let range = if hi == MAX {
        format!("must be at least {}", show(lo))
    } else {
        format!("must be in {}..={}", show(lo), show(hi))
    };
    match u64::try_from(n) {
        Ok(n) if (lo..=hi).contains(&n) => Ok(Typed::Int(n)),
        Ok(n) => Err(format!("{range} (got {})", show(n))),
        Err(_) => Err(format!("{range} (got {n})")),
    }
}

/// `"256MiB"`, `"1g"`, `"512 k"`, `"4096"`: bytes; units are powers of 1024, any case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err("no number".into());
    }
    let n: u64 = s[..digits].parse().map_err(|_| "too large".to_string())?;
    let unit = s[digits..].trim_start();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} (b, k, m, g, t; KiB, MiB, GiB, TiB; a whole number)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_string())
}

/// `"250ms"`, `"1m30s"`, `"2 h"`, or a bare number of `bare_us` microseconds: microseconds.
pub fn parse_duration_us(s: &str, bare_us: u64) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().map_err(|_| "too large".to_string())?;
        return n.checked_mul(bare_us).ok_or_else(|| "too large".into());
    }
    let mut rest = s;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return Err("no number".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("a number must come before {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "too large".to_string())?;
        rest = rest[digits..].trim_start();
        let end = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit_us: u64 = match &rest[..end] {
            "us" | "µs" => 1,
            "ms" => 1000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            "" => return Err(format!("{n} needs a unit (us, ms, s, m, h, d)")),
            u => return Err(format!("unknown unit {u:?} (us, ms, s, m, h, d)")),
        };
        rest = rest[end..].trim_start();
        total = n
            .checked_mul(unit_us)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| "too large".to_string())?;
    }
    Ok(total)
}

/// A listening address: `IP:PORT` (`127.0.0.1:8080`, `[::1]:8080`), `localhost:PORT`
/// (127.0.0.1), or every IPv4 address as nginx and Go write it: `:PORT`, `*:PORT` or a bare
/// `PORT`. Other host names are refused (nothing is resolved at load).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => ("", s),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port {port:?} (0..=65535)"))?;
    let ip = match host.to_ascii_lowercase().as_str() {
        "" | "*" => Ipv4Addr::UNSPECIFIED,
        "localhost" => Ipv4Addr::LOCALHOST,
        h if h.contains(':') && !h.starts_with('[') => {
            return Err("an IPv6 address goes in brackets ([::1]:8080)".into())
        }
        h if h.starts_with('[') => return Err(format!("bad IPv6 address {h}")),
        _ => {
            return Err(format!(
                "{host:?} is not an IP address (only localhost is taken as a name)"
            ))
        }
    };
    Ok(SocketAddr::from((ip, port)))
}

/// `268435456` as `256MiB`; other numbers as they are.
pub fn fmt_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.trailing_zeros() >= shift {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// `90_000_000` µs as `90s`, `1500` as `1500us`: the largest unit that divides it.
pub fn fmt_duration_us(us: u64) -> String {
    if us == 0 {
        return "0".into();
    }
    for (unit_us, unit) in [
        (86_400_000_000, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1000, "ms"),
    ] {
        if us >= unit_us && us / unit_us * unit_us == us {
            return format!("{}{unit}", us / unit_us);
        }
    }
    format!("{us}us")
}

/// Where a value was set.
#[derive(Clone, Debug)]
enum At {
    /// Byte offset in the file.
    File(usize),
    /// The flag's name, without `--`.
    Flag(String),
}

#[derive(Clone, Debug)]
struct Entry {
    val: Val,
    at: At,
    /// A list's strings (trimmed) and their offsets in the file, for [`Doc::item_err`].
    items: Vec<(String, usize)>,
}

/// The file and flags, flattened: `proxy.workers`, `site[1].health.rise` → value and place.
pub(super) struct Doc {
    /// The file's path as given, or `defaults`.
    pub name: String,
    text: String,
    entries: HashMap<String, Entry>,
    /// `[[site]]` tables in the file.
    pub sites: usize,
}

/// The flag that sets `key`: its last part with `-` for `_` (`--segment-size`).
fn flag_name(key: &str) -> String {
    key.rsplit('.').next().unwrap_or(key).replace('_', "-")
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

impl Doc {
    /// Reads `file` (if any) and applies `flags` (`(key, value)` pairs, in order).
    pub fn load(file: Option<&Path>, flags: &[(String, String)]) -> Result<Doc, ConfigError> {
        let mut doc = Doc {
            name: "defaults".into(),
            text: String::new(),
            entries: HashMap::new(),
            sites: 0,
        };
        if let Some(p) = file {
            doc.name = p.display().to_string();
            doc.text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("{}: {e}", doc.name)))?;
            let parsed = toml_edit::ImDocument::parse(doc.text.clone()).map_err(|e| {
                let at = e.span().map_or(String::new(), |s| doc.line_col(s.start));
                let msg: Vec<&str> = e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                ConfigError(format!("{}{at}: {}", doc.name, msg.join("; ")))
            })?;
            doc.walk("", parsed.as_table())?;
        }
        for (n, (key, value)) in flags.iter().enumerate() {
            let val = if REPEATABLE.contains(&key.as_str()) {
                if flags[..n].iter().any(|(k, _)| k == key) {
                    continue;
                }
                Val::Flags(
                    flags[n..]
                        .iter()
                        .filter(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                        .collect(),
                )
            } else {
                Val::Flag(value.clone())
            };
            let at = At::Flag(flag_name(key));
            let items = Vec::new();
            doc.entries.insert(key.clone(), Entry { val, at, items });
        }
        doc.check_types()?;
        Ok(doc)
    }

    /// Reads every value as its key's type says, in file order then flags, so that either
    /// daemon refuses a bad value of the other's section too (`--check` checks all).
    fn check_types(&self) -> Result<(), ConfigError> {
        let mut keys: Vec<(&String, &Entry)> = self.entries.iter().collect();
        keys.sort_by_key(|(k, e)| match &e.at {
            At::File(off) => (0, *off, (*k).clone()),
            At::Flag(_) => (1, 0, (*k).clone()),
        });
        for (key, _) in keys {
            self.get(key)?;
        }
        Ok(())
    }

    /// `:LINE:COL` of a byte offset (columns count characters, from 1).
    fn line_col(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!(":{line}:{col}")
    }

    /// Records the keys of table `t` (named `prefix`), refusing unknown ones.
    fn walk(&mut self, prefix: &str, t: &dyn toml_edit::TableLike) -> Result<(), ConfigError> {
        for (k, item) in t.iter() {
            let full = join(prefix, k);
            let key_at = t.key(k).and_then(|k| k.span()).map_or(0, |s| s.start);
            if let Some((_, why)) = RETIRED.iter().find(|(k, _)| *k == full) {
                return Err(ConfigError(format!(
                    "{}{}: {full}: {why}",
                    self.name,
                    self.line_col(key_at)
                )));
            }
            let Some(def) = lookup(&full) else {
                return Err(ConfigError(format!(
                    "{}{}: {full}: unknown key{}",
                    self.name,
                    self.line_col(key_at),
                    hint(&full)
                )));
            };
            let at = item.span().map_or(key_at, |s| s.start);
            let err = |doc: &Doc, what: &str, got: &str| {
                ConfigError(format!(
                    "{}{}: {full}: expected {what}, got {got}",
                    doc.name,
                    doc.line_col(at)
                ))
            };
            match def.ty {
                Ty::Table => {
                    let Some(sub) = item.as_table_like() else {
                        return Err(err(self, "a table", &value_of(item).describe()));
                    };
                    self.put(&full, Val::Other("a table"), at);
                    self.walk(&full, sub)?;
                }
                Ty::Tables => {
                    let tables: Vec<(&dyn toml_edit::TableLike, usize)> = match item {
                        toml_edit::Item::ArrayOfTables(a) => a
                            .iter()
                            .map(|t| {
                                let at = t.span().map_or(at, |s| s.start);
                                (t as &dyn toml_edit::TableLike, at)
                            })
                            .collect(),
                        toml_edit::Item::Value(toml_edit::Value::Array(a)) => a
                            .iter()
                            .map(|v| match v {
                                toml_edit::Value::InlineTable(t) => Ok((
                                    t as &dyn toml_edit::TableLike,
                                    t.span().map_or(at, |s| s.start),
                                )),
                                _ => Err(err(self, "tables ([[site]])", "a list of values")),
                            })
                            .collect::<Result<_, _>>()?,
                        other => {
                            return Err(err(self, "tables ([[site]])", &value_of(other).describe()))
                        }
                    };
                    for (i, (sub, at)) in tables.into_iter().enumerate() {
                        let name = format!("{full}[{i}]");
                        self.put(&name, Val::Other("a table"), at);
                        self.walk(&name, sub)?;
                        self.sites = self.sites.max(i + 1);
                    }
                }
                _ => {
                    self.put(&full, value_of(item), at);
                    if let Some(a) = item.as_value().and_then(toml_edit::Value::as_array) {
                        let items = a
                            .iter()
                            .filter_map(|v| Some((v.as_str()?.trim().to_string(), v.span()?.start)))
                            .collect();
                        if let Some(e) = self.entries.get_mut(&full) {
                            e.items = items;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, key: &str, val: Val, offset: usize) {
        self.entries.insert(
            key.to_string(),
            Entry {
                val,
                at: At::File(offset),
                items: Vec::new(),
            },
        );
    }

    /// Whether `key` was given (file or flag).
    pub fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Whether `key` was given on the command line.
    pub fn set_by_flag(&self, key: &str) -> bool {
        matches!(
            self.entries.get(key),
            Some(Entry {
                at: At::Flag(_),
                ..
            })
        )
    }

    /// An error about the element `item` of list `key`, placed at the element (its last
    /// occurrence) when the list is in the file, else as [`Doc::err`].
    pub fn item_err(&self, key: &str, item: &str, msg: impl std::fmt::Display) -> ConfigError {
        let at = self
            .entries
            .get(key)
            .and_then(|e| e.items.iter().rev().find(|(s, _)| s == item));
        match at {
            Some((_, off)) => ConfigError(format!(
                "{}{}: {key}: {msg}",
                self.name,
                self.line_col(*off)
            )),
            None => self.err(key, msg),
        }
    }

    /// An error about `key`, placed where it (or, when absent, its table) was set.
    pub fn err(&self, key: &str, msg: impl std::fmt::Display) -> ConfigError {
        let mut k = key;
        loop {
            if let Some(e) = self.entries.get(k) {
                return match &e.at {
                    At::Flag(f) => ConfigError(format!("command line: --{f}: {msg}")),
                    At::File(off) => ConfigError(format!(
                        "{}{}: {key}: {msg}",
                        self.name,
                        self.line_col(*off)
                    )),
                };
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return ConfigError(format!("{}: {key}: {msg}", self.name)),
            }
        }
    }

    /// The value of `key` as its type says, `None` when it is not set.
    pub fn get(&self, key: &str) -> Result<Option<Typed>, ConfigError> {
        let def = lookup(key).unwrap_or_else(|| panic!("{key} is not in KEYS"));
        match self.entries.get(key) {
            None => Ok(None),
            Some(e) => typed(def.ty, &e.val)
                .map(Some)
                .map_err(|m| self.err(key, m)),
        }
    }

    /// The value of `key`, or its default (which a key read this way must have).
    pub fn value(&self, key: &str) -> Result<Typed, ConfigError> {
        match self.get(key)? {
            Some(v) => Ok(v),
            None => Ok(default_of(key).unwrap_or_else(|| panic!("{key} has no default"))),
        }
    }

    pub fn int(&self, key: &str) -> Result<u64, ConfigError> {
        match self.value(key)? {
            Typed::Int(n) => Ok(n),
            other => unreachable!("{key}: {other:?}"),
        }
    }

    /// `Some(n)` when set.
    pub fn opt_int(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Typed::Int(n)) => Ok(Some(n)),
            Some(other) => unreachable!("{key}: {other:?}"),
        }
    }

    /// A `*_ms` key as a duration.
    pub fn ms(&self, key: &str) -> Result<Duration, ConfigError> {
        self.int(key).map(Duration::from_millis)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Typed::Str(s)) => Ok(Some(s)),
            Some(other) => unreachable!("{key}: {other:?}"),
        }
    }

    pub fn str(&self, key: &str) -> Result<String, ConfigError> {
        match self.value(key)? {
            Typed::Str(s) => Ok(s),
            other => unreachable!("{key}: {other:?}"),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        match self.value(key)? {
            Typed::Bool(b) => Ok(b),
            other => unreachable!("{key}: {other:?}"),
        }
    }

    /// A list key; empty when unset without a default.
    pub fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let v = match self.get(key)? {
            Some(v) => v,
            None => default_of(key).unwrap_or(Typed::List(Vec::new())),
        };
        match v {
            Typed::List(l) => Ok(l),
            other => unreachable!("{key}: {other:?}"),
        }
    }

    pub fn addrs(&self, key: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        match self.value(key)? {
            Typed::Addrs(a) => Ok(a),
            other => unreachable!("{key}: {other:?}"),
        }
    }
}

/// For an unknown key: a known key of the same table one or two typos away, or the same key
/// in another table (" (did you mean capacity?)", " (cached.capacity is a key of [cached])").
fn hint(full: &str) -> String {
    let plain = lookup_name(full);
    let (parent, last) = plain.rsplit_once('.').unwrap_or(("", &plain));
    let siblings = KEYS
        .iter()
        .filter(|k| k.name.rsplit_once('.').map_or("", |(p, _)| p) == parent);
    if let Some(k) = siblings
        .map(|k| k.name.rsplit('.').next().unwrap_or(k.name))
        .min_by_key(|k| edit_distance(k, last))
        .filter(|k| edit_distance(k, last) <= 2)
    {
        return format!(" (did you mean {k}?)");
    }
    match KEYS.iter().find(|k| {
        k.name.rsplit_once('.').map(|(_, l)| l) == Some(last) && !k.name.starts_with("site.")
    }) {
        Some(k) => {
            let (section, _) = k.name.rsplit_once('.').unwrap_or(("", k.name));
            format!(" ({} is a key of [{section}])", k.name)
        }
        None => String::new(),
    }
}

/// `site[2].health.rise` as `site.health.rise`.
fn lookup_name(name: &str) -> String {
    let mut plain = String::with_capacity(name.len());
    let mut skip = false;
    for c in name.chars() {
        match c {
            '[' => skip = true,
            ']' => skip = false,
            c if !skip => plain.push(c),
            _ => {}
        }
    }
    plain
}

/// Levenshtein distance (insertions, deletions, substitutions), for short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = up;
        }
    }
    row[b.len()]
}

/// A TOML value as read (for an item that is a table: "a table").
fn value_of(item: &toml_edit::Item) -> Val {
    use toml_edit::Value as V;
    fn conv(v: &V) -> Val {
        match v {
            V::String(s) => Val::Str(s.value().clone()),
            V::Integer(n) => Val::Int(*n.value()),
            V::Float(f) => Val::Float(*f.value()),
            V::Boolean(b) => Val::Bool(*b.value()),
            V::Datetime(_) => Val::Other("a date"),
            V::Array(a) => Val::List(a.iter().map(conv).collect()),
            V::InlineTable(_) => Val::Other("a table"),
        }
    }
    match item {
        toml_edit::Item::Value(v) => conv(v),
        toml_edit::Item::None => Val::Other("nothing"),
        _ => Val::Other("a table"),
    }
}

/// Parses one TOML value (`2`, `"256MiB"`, `["a", "b"]`).
fn toml_literal(text: &str) -> Result<Val, String> {
    let doc = toml_edit::ImDocument::parse(format!("v = {text}")).map_err(|e| e.to_string())?;
    Ok(value_of(doc.as_table().get("v").expect("one key")))
}

/// The default of `key`, checked (`None`: unset or computed).
pub fn default_of(key: &str) -> Option<Typed> {
    let def = lookup(key)?;
    let text = def.default?;
    let v = toml_literal(text).unwrap_or_else(|e| panic!("{key}: default {text}: {e}"));
    Some(typed(def.ty, &v).unwrap_or_else(|e| panic!("{key}: default {text}: {e}")))
}

/// What `text` means for `key`, written as in TOML (`toml`) or as a flag's value.
pub fn read_as(key: &str, text: &str, toml: bool) -> Result<Typed, String> {
    let def = lookup(key).ok_or_else(|| format!("{key}: unknown key"))?;
    let v = if toml {
        toml_literal(text)?
    } else {
        Val::Flag(text.to_string())
    };
    typed(def.ty, &v)
}

/// Checks a daemon's `--help` against the key list and the README's configuration table:
/// every flag of `flags` (flag, key) is listed, the default it shows in brackets (on the
/// entry's last line) is the key's, and the README has a row for the key naming the flag.
pub fn check_help(help: &str, flags: &[(&str, &str)], readme: &str) -> Result<(), String> {
    let lines: Vec<&str> = help.lines().collect();
    for (flag, key) in flags {
        let start = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("--{flag} ")))
            .ok_or_else(|| format!("--help does not list --{flag}"))?;
        // The entry runs on over indented continuation lines.
        let end = lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with("                  "))
            .count();
        let last = lines[start + end].trim_end();
        let shown = last
            .strip_suffix(']')
            .and_then(|l| l.rfind('[').map(|b| &l[b + 1..]));
        if let Some(shown) = shown {
            check_documented_default(key, shown, false)
                .map_err(|e| format!("--help: {}: {e}", lines[start]))?;
        }
        let row = readme
            .lines()
            .find(|l| l.contains(&format!("| `{key}` |")))
            .ok_or_else(|| format!("README's configuration table lacks {key}"))?;
        if !row.contains(&format!("`--{flag}`")) {
            return Err(format!("README: {key} is --{flag}: {row}"));
        }
    }
    Ok(())
}

/// Checks a documented default (`[262144]` in `--help`, a README cell, a shmproxy.toml
/// value): `text` must mean what the key's default means. `none` (or `—`, or `""` in TOML)
/// documents a key without a default.
pub fn check_documented_default(key: &str, text: &str, toml: bool) -> Result<(), String> {
    let def = lookup(key).ok_or_else(|| format!("{key}: not a key"))?;
    let text = text.trim();
    let none = matches!(text, "none" | "—" | "-") || (toml && text == "\"\"");
    match (def.default, none) {
        (None, true) => Ok(()),
        (None, false) => Err(format!("{key} has no default, but {text:?} is documented")),
        (Some(d), true) => Err(format!("{key} defaults to {d}, documented as none")),
        (Some(d), false) => {
            let want = default_of(key).expect("checked");
            let got = read_as(key, text, toml).map_err(|e| format!("{key}: {text:?}: {e}"))?;
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{key}: documented as {text}, but the default is {d}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_in_any_case() {
        for (s, want) in [
            ("0", 0),
            ("4096", 4096),
            ("512b", 512),
            ("512k", 512 << 10),
            ("64KiB", 64 << 10),
            ("64kb", 64 << 10),
            ("256MiB", 256 << 20),
            ("256 MB", 256 << 20),
            ("1g", 1 << 30),
            ("1GiB", 1 << 30),
            ("2t", 2 << 40),
            (" 8m ", 8 << 20),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s:?}");
        }
        for (s, why) in [
            ("", "no number"),
            ("k", "no number"),
            ("1.5g", "unknown unit \".5g\""),
            ("256XB", "unknown unit \"XB\""),
            ("-1", "no number"),
            ("99999999999999999999", "too large"),
            ("16777216t", "too large"),
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        assert_eq!(fmt_size(268_435_456), "256MiB");
        assert_eq!(fmt_size(1536), "1536");
        assert_eq!(fmt_size(3 << 10), "3KiB");
        assert_eq!(fmt_size(0), "0");
    }

    #[test]
    fn durations_take_units_and_bare_numbers_are_the_keys_unit() {
        let ms = 1000;
        for (s, bare, want_us) in [
            ("250", ms, 250_000),
            ("250ms", ms, 250_000),
            ("5s", ms, 5_000_000),
            ("2m", ms, 120_000_000),
            ("1h", ms, 3_600_000_000),
            ("1d", ms, 86_400_000_000),
            ("1m30s", ms, 90_000_000),
            ("1h 30m", ms, 5_400_000_000),
            ("500us", 1, 500),
            ("500µs", 1, 500),
            ("500", 1, 500),
        ] {
            assert_eq!(parse_duration_us(s, bare), Ok(want_us), "{s:?}");
        }
        for (s, why) in [
            ("", "no number"),
            ("s", "a number must come before"),
            ("5x", "unknown unit \"x\""),
            ("1m30", "30 needs a unit"),
            ("1.5s", "unknown unit \".\""),
            ("99999999999d", "too large"),
        ] {
            let e = parse_duration_us(s, ms).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        assert_eq!(fmt_duration_us(90_000_000), "90s");
        assert_eq!(fmt_duration_us(86_400_000_000), "1d");
        assert_eq!(fmt_duration_us(1500), "1500us");
        assert_eq!(fmt_duration_us(250_000), "250ms");
    }

    #[test]
    fn listen_addresses_in_every_usual_spelling() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (s, want) in [
            ("127.0.0.1:8080", a("127.0.0.1:8080")),
            ("[::1]:8080", a("[::1]:8080")),
            ("[::]:443", a("[::]:443")),
            ("localhost:8080", a("127.0.0.1:8080")),
            ("LocalHost:81", a("127.0.0.1:81")),
            (":8080", a("0.0.0.0:8080")),
            ("*:8080", a("0.0.0.0:8080")),
            ("8080", a("0.0.0.0:8080")),
            (" 10.0.0.1:0 ", a("10.0.0.1:0")),
        ] {
            assert_eq!(parse_listen(s), Ok(want), "{s:?}");
        }
        for (s, why) in [
            ("example.com:80", "not an IP address"),
            ("127.0.0.1:99999", "bad port"),
            ("127.0.0.1", "bad port"),
            (":", "bad port"),
            ("::1:8080", "in brackets"),
            ("[::g]:80", "bad IPv6"),
            ("", "bad port"),
        ] {
            let e = parse_listen(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        // Lists: a TOML array, a comma-separated flag, repeated flags; no duplicates.
        let listen = lookup("proxy.listen").unwrap().ty;
        let two = Typed::Addrs(vec![a("127.0.0.1:8080"), a("[::1]:8080")]);
        let v = Val::List(vec![
            Val::Str("localhost:8080".into()),
            Val::Str("[::1]:8080".into()),
        ]);
        assert_eq!(typed(listen, &v), Ok(two.clone()));
        let v = Val::Flag("127.0.0.1:8080,[::1]:8080".into());
        assert_eq!(typed(listen, &v), Ok(two.clone()));
        let v = Val::Flags(vec!["127.0.0.1:8080".into(), "[::1]:8080".into()]);
        assert_eq!(typed(listen, &v), Ok(two));
        let v = Val::Int(8080);
        assert_eq!(typed(listen, &v), Ok(Typed::Addrs(vec![a("0.0.0.0:8080")])));
        let e = typed(listen, &Val::Flag("127.0.0.1:1,localhost:1".into())).unwrap_err();
        assert_eq!(e, "127.0.0.1:1 is listed twice");
        let e = typed(listen, &Val::List(Vec::new())).unwrap_err();
        assert!(e.ends_with("got an empty list"), "{e}");
        let e = typed(listen, &Val::Bool(true)).unwrap_err();
        assert!(
            e.starts_with("expected an address") && e.ends_with("got true"),
            "{e}"
        );
    }

    #[test]
    fn type_errors_say_what_was_expected_and_what_came() {
        let t = |key: &str, v: Val| typed(lookup(key).unwrap().ty, &v).unwrap_err();
        assert_eq!(
            t("proxy.workers", Val::Flag("four".into())),
            "expected an integer, got \"four\""
        );
        assert_eq!(
            t("proxy.workers", Val::Str("4".into())),
            "expected an integer, got \"4\""
        );
        assert_eq!(
            t("proxy.workers", Val::Float(2.5)),
            "expected an integer, got 2.5"
        );
        assert_eq!(t("proxy.workers", Val::Int(0)), "must be in 1..=64 (got 0)");
        assert_eq!(
            t("proxy.workers", Val::Int(-3)),
            "must be in 1..=64 (got -3)"
        );
        assert_eq!(
            t("proxy.segment_size", Val::Str("12".into())),
            "must be in 1KiB..=64MiB (got 12)"
        );
        assert!(t("cached.capacity", Val::Str("lots".into()))
            .starts_with("expected a size (bytes, or a number with a unit: 512k, 64KiB, 256MiB, 1g), got \"lots\": no number"));
        assert!(t("cached.capacity", Val::Bool(true)).ends_with("got true"));
        assert_eq!(
            t("proxy.idle_timeout_ms", Val::Str("0s".into())),
            "must be in 1ms..=1d (got 0)"
        );
        assert!(t("proxy.idle_timeout_ms", Val::Str("1500us".into()))
            .ends_with("got \"1500us\": not a whole number of milliseconds"));
        assert!(t("proxy.accept_coalesce_us", Val::Str("1s".into()))
            .starts_with("must be in 0..=100ms (got 1s)"));
        assert_eq!(t("cached.root", Val::Int(3)), "expected a string, got 3");
        assert_eq!(
            t("site.tls_verify", Val::Flag("yes".into())),
            "expected true or false, got \"yes\""
        );
        assert_eq!(
            t("site.hosts", Val::List(vec![Val::Int(1)])),
            "expected a string or a list of strings, got 1 in the list"
        );
        assert_eq!(
            t("cached.max_waiters", Val::Other("a table")),
            "expected an integer, got a table"
        );
    }

    #[test]
    fn values_with_units_read_as_their_key_says() {
        let r = |key: &str, text: &str, toml: bool| read_as(key, text, toml).unwrap();
        assert_eq!(
            r("cached.capacity", "\"256MiB\"", true),
            Typed::Int(256 << 20)
        );
        assert_eq!(
            r("cached.capacity", "268435456", true),
            Typed::Int(256 << 20)
        );
        assert_eq!(r("cached.capacity", "256m", false), Typed::Int(256 << 20));
        assert_eq!(
            r("proxy.header_timeout_ms", "\"5s\"", true),
            Typed::Int(5000)
        );
        assert_eq!(
            r("proxy.header_timeout_ms", "5000", false),
            Typed::Int(5000)
        );
        assert_eq!(
            r("proxy.accept_coalesce_us", "\"2ms\"", true),
            Typed::Int(2000)
        );
        assert_eq!(
            r("cached.heuristic_ttl_ms", "\"10m\"", true),
            Typed::Int(600_000)
        );
        assert_eq!(r("proxy.min_send_rate", "\"64k\"", true), Typed::Int(65536));
        // A flag's text is the key's type: digits stay a string where a string is wanted.
        assert_eq!(r("instance", "123", false), Typed::Str("123".into()));
        assert_eq!(
            r("proxy.stats_allow", "10.0.0.0/8, ::1", false),
            Typed::List(vec!["10.0.0.0/8".into(), "::1".into()])
        );
        assert_eq!(
            r("cached.origin", "http://a,b", false),
            Typed::List(vec!["http://a,b".into()])
        );
    }

    #[test]
    fn every_key_is_listed_once_and_every_default_reads() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                !KEYS[..i].iter().any(|o| o.name == k.name),
                "{} twice",
                k.name
            );
            if let Some((parent, _)) = k.name.rsplit_once('.') {
                let p = lookup(parent).unwrap_or_else(|| panic!("{}: no {parent}", k.name));
                assert!(matches!(p.ty, Ty::Table | Ty::Tables), "{parent}");
            }
            if k.default.is_some() {
                default_of(k.name).unwrap();
            }
        }
        for k in REPEATABLE {
            assert!(lookup(k).is_some(), "{k}");
        }
        assert_eq!(
            default_of("cached.queue_capacity"),
            Some(Typed::Int(crate::mq::DEFAULT_CAPACITY as u64))
        );
        assert_eq!(
            lookup("site[3].health.rise").unwrap().name,
            "site.health.rise"
        );
        assert!(lookup("proxy.nope").is_none());
    }

    #[test]
    fn documented_defaults_are_checked_against_the_key_list() {
        let ok = |k: &str, t: &str, toml: bool| check_documented_default(k, t, toml);
        assert_eq!(ok("cached.capacity", "\"256MiB\"", true), Ok(()));
        assert_eq!(ok("cached.capacity", "268435456", false), Ok(()));
        assert!(ok("cached.capacity", "128MiB", false)
            .unwrap_err()
            .contains("the default is 268435456"));
        assert_eq!(ok("proxy.access_log", "none", false), Ok(()));
        assert!(ok("proxy.access_log", "\"a.log\"", true).is_err());
        assert!(ok("proxy.workers", "none", false).is_err());
        assert_eq!(ok("proxy.stats_allow", "127.0.0.0/8,::1", false), Ok(()));
        assert_eq!(ok("proxy.trusted_proxies", "[]", true), Ok(()));
        assert_eq!(ok("proxy.listen", "127.0.0.1:8080", false), Ok(()));
        assert!(ok("proxy.listen", ":8080", false).is_err());
        assert!(ok("proxy.nope", "1", false).is_err());
    }
}

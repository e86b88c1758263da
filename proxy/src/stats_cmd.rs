//! `proxy stats`: reads an instance's counters straight from shared memory (the proxy's and
//! cached's stats regions and the segment pool), like `varnishstat`, with no HTTP involved.
//! One-shot by default; `--watch` redraws every second with rates; `--json` prints the same
//! document as `/__shmproxy/stats` (one per line with `--watch`); `--markdown` prints the
//! README's table of counters. Read-only: it never writes a counter or the pool.

use common::config::ProxyConfig;
use common::pool::Pool;
use common::stats::{self, Daemon, FieldKind, ServerState, Snapshot, StatsRegion, View, FIELDS};
use common::Names;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
proxy stats — show an instance's counters, read from shared memory (no HTTP)

Usage: proxy stats [OPTIONS]

Options:
  --instance NAME     instance to read                        [shmproxy]
  --config FILE       take the instance name from this config file
  --json              print the JSON document of /__shmproxy/stats
  --watch             redraw every second, with rates per second (Ctrl-C to quit)
  --interval MS       refresh period of --watch               [1000]
  --markdown          print the table of counters (README) and exit
  -h, --help          this text
";

struct Args {
    instance: Option<String>,
    config: Option<PathBuf>,
    json: bool,
    watch: bool,
    interval: Duration,
}

fn parse() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(std::env::args_os().skip(2));
    let mut a = Args {
        instance: None,
        config: None,
        json: false,
        watch: false,
        interval: Duration::from_secs(1),
    };
    let bad = |e: lexopt::Error| format!("stats: {e}");
    while let Some(arg) = p.next().map_err(bad)? {
        match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(None);
            }
            Long("markdown") => {
                print!("{}", stats::markdown_table());
                return Ok(None);
            }
            Long("instance") => a.instance = Some(p.value().map_err(bad)?.string().map_err(bad)?),
            Long("config") => a.config = Some(p.value().map_err(bad)?.into()),
            Long("json") => a.json = true,
            Long("watch") => a.watch = true,
            Long("interval") => {
                let v: u64 = p.value().map_err(bad)?.parse().map_err(bad)?;
                a.interval = Duration::from_millis(v.clamp(50, 3_600_000));
            }
            other => return Err(bad(other.unexpected())),
        }
    }
    Ok(Some(a))
}

/// Entry point of `proxy stats`.
pub fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy {e}");
            return ExitCode::from(2);
        }
    };
    let flags: Vec<(String, String)> = args
        .instance
        .iter()
        .map(|i| ("instance".to_string(), i.clone()))
        .collect();
    let cfg = match ProxyConfig::load(args.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxy stats: {e}");
            return ExitCode::from(2);
        }
    };
    let names = Names::for_instance(&cfg.instance);
    let mut prev: Option<View> = None;
    loop {
        let view = match read(&names) {
            Ok(v) => Some(v),
            Err(e) if args.watch => {
                println!("\x1b[H\x1b[2J{e}; waiting for it…");
                let _ = std::io::stdout().flush();
                None
            }
            Err(e) => {
                eprintln!("proxy stats: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(view) = view {
            let text = if args.json {
                format!("{}\n", view.json())
            } else {
                let screen = screen(&view, prev.as_ref());
                if args.watch {
                    format!("\x1b[H\x1b[2J{screen}")
                } else {
                    screen
                }
            };
            let mut out = std::io::stdout().lock();
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::SUCCESS; // stdout closed (e.g. piped into `head`)
            }
            prev = Some(view);
        }
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(args.interval);
    }
}

/// Maps the instance's regions (read-only use) and reads them.
fn read(names: &Names) -> Result<View, String> {
    let proxy = StatsRegion::open(&names.stats_proxy)
        .map_err(|e| format!("instance {:?} has no live proxy ({e})", names.instance))?;
    if !proxy.owner().alive() {
        return Err(format!(
            "instance {:?}: the proxy that created {} is gone",
            names.instance, names.stats_proxy
        ));
    }
    let pool = Pool::open(names).ok();
    Ok(View::collect(names, Some(&proxy), pool.as_ref()))
}

/// The text screen: header, pool map, latency, then one line per counter with its rate.
fn screen(v: &View, prev: Option<&View>) -> String {
    let mut out = String::with_capacity(8192);
    let secs = prev.map_or(0.0, |p| v.time_ms.saturating_sub(p.time_ms) as f64 / 1000.0);
    let _ = writeln!(
        out,
        "shmproxy {} — instance {}   cached: {}",
        env!("CARGO_PKG_VERSION"),
        v.instance,
        match &v.cached {
            Some((_, pid)) => format!("running (pid {pid})"),
            None => "NOT RUNNING".to_string(),
        }
    );
    if let Some(p) = &v.pool {
        let _ = writeln!(
            out,
            "pool: {} segments × {} bytes — {} free, {} in use, {} quarantined",
            p.segments, p.segment_size, p.free, p.in_use, p.quarantined
        );
        for chunk in p.states.as_bytes().chunks(64) {
            let _ = writeln!(out, "  [{}]", String::from_utf8_lossy(chunk));
        }
    }
    if let Some(s) = &v.proxy {
        let _ = writeln!(
            out,
            "latency: p50 ≤ {} µs, p90 ≤ {} µs, p99 ≤ {} µs over {} requests",
            s.latency_percentile(0.5),
            s.latency_percentile(0.9),
            s.latency_percentile(0.99),
            s.latency_count()
        );
    }
    if !v.workers.is_empty() {
        out.push_str("workers:");
        for w in &v.workers {
            let _ = write!(
                out,
                "  #{} {} conn ({} idle) {} req",
                w.worker, w.connections_active, w.connections_idle, w.requests
            );
        }
        out.push('\n');
    }
    tables(&mut out, v);
    let _ = writeln!(
        out,
        "\n{:<36} {:>16} {:>12}  DESCRIPTION",
        "NAME",
        "VALUE",
        if secs > 0.0 { "RATE/s" } else { "" }
    );
    let regions = [
        (
            Daemon::Proxy,
            v.proxy.as_ref(),
            prev.and_then(|p| p.proxy.as_ref()),
        ),
        (
            Daemon::Cached,
            v.cached.as_ref().map(|c| &c.0),
            prev.and_then(|p| p.cached.as_ref().map(|c| &c.0)),
        ),
    ];
    for (region, now, before) in regions {
        let Some(now) = now else { continue };
        counters(&mut out, region, now, before, secs);
    }
    out
}

fn counters(
    out: &mut String,
    region: Daemon,
    now: &Snapshot,
    before: Option<&Snapshot>,
    secs: f64,
) {
    for (i, f) in FIELDS.iter().enumerate() {
        if !f.shown_in(region) {
            continue;
        }
        let value = now.values[i];
        let shown = match f.kind {
            FieldKind::Counter => value.to_string(),
            FieldKind::Gauge => (value as i64).to_string(),
        };
        let rate = match (f.kind, before) {
            (FieldKind::Counter, Some(b)) if secs > 0.0 => {
                format!("{:.1}", value.wrapping_sub(b.values[i]) as f64 / secs)
            }
            _ => String::new(),
        };
        let label = f
            .family
            .map(|fam| format!(" ({}={})", fam.label, fam.value))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<36} {shown:>16} {rate:>12}  {}{label}",
            format!("{}.{}", region.as_str(), f.name),
            f.help
        );
    }
}

/// Sites and upstream servers, one line each (nothing in disk mode).
fn tables(out: &mut String, v: &View) {
    if !v.sites.is_empty() {
        let _ = writeln!(
            out,
            "sites:   {:<24} {:>10} {:>10} {:>10} {:>8}",
            "NAME", "REQUESTS", "HITS", "MISSES", "ERRORS"
        );
        for s in &v.sites {
            let _ = writeln!(
                out,
                "  #{:<5} {:<24} {:>10} {:>10} {:>10} {:>8}",
                s.index,
                s.name,
                s.get("requests"),
                s.get("hits"),
                s.get("misses"),
                s.get("errors")
            );
        }
    }
    if !v.servers.is_empty() {
        let _ = writeln!(
            out,
            "servers: {:<36} {:<5} {:>9} {:>8} {:>7} {:>8} {:>6}",
            "SITE / URL", "STATE", "REQUESTS", "FAILURES", "RETRIES", "INFLIGHT", "DOWNS"
        );
        for s in &v.servers {
            let _ = writeln!(
                out,
                "  #{:<5} {:<36} {:<5} {:>9} {:>8} {:>7} {:>8} {:>6}",
                s.index,
                format!("{} {}", s.site_name, s.url),
                if s.state == ServerState::Down {
                    "DOWN"
                } else {
                    "up"
                },
                s.get("requests"),
                s.get("failures"),
                s.get("retries"),
                s.get("in_flight") as i64,
                s.get("down_events")
            );
        }
    }
}

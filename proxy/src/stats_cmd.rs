//! `proxy stats`: reads an instance's counters straight from shared memory (the proxy's and
//! cached's stats regions and the segment pool), like `varnishstat`, with no HTTP involved.
//! One-shot by default; `--watch` redraws every second with rates; `--json` prints the same
//! document as `/__shmproxy/stats` (one per line with `--watch`); `--markdown` prints the
//! README's table of counters. Read-only: it never writes a counter or the pool.
//!
//! `--watch` on a terminal is a full-screen view like `varnishstat`/`top` (raw mode and the
//! alternate screen through `crossterm`): a summary block (rates over the last refresh), then the
//! counters that changed, scrollable with the arrow keys and PgUp/PgDn, fitted to the terminal
//! size read at every frame; `q`, Esc or Ctrl-C quits and restores the terminal. When stdout is
//! not a terminal, `--watch` prints the whole plain screen every interval instead.

use common::config::ProxyConfig;
use common::pool::Pool;
use common::stats::{self, Daemon, FieldKind, ServerState, Snapshot, StatsRegion, View, FIELDS};
use common::Names;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
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
  --watch             redraw every second, with rates per second; on a terminal a
                      full-screen view (arrows/PgUp/PgDn scroll, q quits)
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
    if args.watch && !args.json && std::io::stdout().is_terminal() {
        return match tui::run(&names, args.interval) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("proxy stats: terminal: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    let regions = regions(v, prev);
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

/// The full-screen `--watch` view on a terminal.
mod tui {
    use super::read;
    use common::stats::{self, FieldKind, ServerState, Snapshot, View, FIELDS};
    use common::Names;
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use crossterm::style::{Attribute, Print, SetAttribute};
    use crossterm::terminal::{self, ClearType};
    use crossterm::{cursor, execute, queue};
    use std::fmt::Write as _;
    use std::io::{self, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Raw mode and the alternate screen while alive; `Drop` restores the terminal on every exit
    /// path (return, error, panic unwinding).
    struct Screen;

    impl Screen {
        fn enter() -> io::Result<Screen> {
            terminal::enable_raw_mode()?;
            let s = Screen;
            execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
            Ok(s)
        }
    }

    impl Drop for Screen {
        fn drop(&mut self) {
            let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
            let _ = terminal::disable_raw_mode();
        }
    }

    /// What the keys did to the view.
    enum Key {
        Quit,
        Scroll(isize),
        Top,
        Bottom,
        Redraw,
        None,
    }

    fn key(ev: Event, page: usize) -> Key {
        let page = page.max(1) as isize;
        match ev {
            Event::Key(k) if k.kind != KeyEventKind::Release => match k.code {
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Key::Quit,
                KeyCode::Up | KeyCode::Char('k') => Key::Scroll(-1),
                KeyCode::Down | KeyCode::Char('j') => Key::Scroll(1),
                KeyCode::PageUp => Key::Scroll(-page),
                KeyCode::PageDown | KeyCode::Char(' ') => Key::Scroll(page),
                KeyCode::Home | KeyCode::Char('g') => Key::Top,
                KeyCode::End | KeyCode::Char('G') => Key::Bottom,
                _ => Key::None,
            },
            Event::Resize(..) => Key::Redraw,
            _ => Key::None,
        }
    }

    /// Runs until `q`/Esc/Ctrl-C, SIGTERM, SIGINT or SIGHUP.
    pub fn run(names: &Names, interval: Duration) -> io::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        let _screen = Screen::enter()?;
        let mut prev: Option<View> = None;
        let mut now: Result<View, String> = read(names);
        let mut scroll = 0usize;
        let mut next = Instant::now() + interval;
        loop {
            // A refresh keeps the scroll position the keys chose; only a key's frame clamps it.
            let (page, _) = draw(&now, prev.as_ref(), interval, scroll)?;
            // Keys until the next refresh; the signal flag is looked at every 100 ms.
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if event::poll(left.min(Duration::from_millis(100)))? {
                    match key(event::read()?, page) {
                        Key::Quit => return Ok(()),
                        Key::Scroll(n) => scroll = scroll.saturating_add_signed(n),
                        Key::Top => scroll = 0,
                        Key::Bottom => scroll = usize::MAX,
                        Key::Redraw => {}
                        Key::None => continue,
                    }
                    scroll = draw(&now, prev.as_ref(), interval, scroll)?.1;
                }
            }
            next += interval;
            if next < Instant::now() {
                next = Instant::now() + interval;
            }
            let fresh = read(names);
            if let Ok(v) = &fresh {
                if let Ok(old) = std::mem::replace(&mut now, Ok(v.clone())) {
                    prev = Some(old);
                }
            } else {
                now = fresh;
                prev = None;
            }
        }
    }

    /// Draws one frame fitted to the terminal's current size, the counters from line `scroll`
    /// (clamped); returns the body's height (a page) and the clamped scroll.
    fn draw(
        now: &Result<View, String>,
        prev: Option<&View>,
        interval: Duration,
        scroll: usize,
    ) -> io::Result<(usize, usize)> {
        let (cols, rows) = terminal::size()?;
        let (cols, rows) = (cols.max(1) as usize, rows.max(1) as usize);
        let (head, body) = match now {
            Ok(v) => (summary(v, prev), changed(v, prev)),
            Err(e) => (vec![format!("{e}; waiting for it…")], Vec::new()),
        };
        let head: Vec<String> = head.into_iter().take(rows).collect();
        // Rows left for the counters: minus the summary, the column header and the footer.
        let height = rows.saturating_sub(head.len() + 2);
        let max_scroll = body.len().saturating_sub(height);
        let scroll = scroll.min(max_scroll);
        let mut out = io::stdout().lock();
        let mut y = 0u16;
        for h in &head {
            line(&mut out, &mut y, cols, h, false)?;
        }
        if rows >= head.len() + 2 {
            line(
                &mut out,
                &mut y,
                cols,
                &format!(
                    "{:<32} {:>12} {:>9}  DESCRIPTION",
                    "CHANGED COUNTER", "VALUE", "RATE/s"
                ),
                true,
            )?;
            for b in body.iter().skip(scroll).take(height) {
                line(&mut out, &mut y, cols, b, false)?;
            }
            queue!(out, terminal::Clear(ClearType::FromCursorDown))?;
            let shown = if body.is_empty() {
                "no counter changed".to_string()
            } else {
                format!(
                    "{}-{} of {}",
                    scroll + 1,
                    (scroll + height).min(body.len()),
                    body.len()
                )
            };
            y = (rows - 1) as u16;
            line(
                &mut out,
                &mut y,
                cols,
                &format!(
                    "{shown} · q quits · ↑↓ PgUp/PgDn Home/End scroll · every {:.1}s",
                    interval.as_secs_f64()
                ),
                true,
            )?;
        } else {
            queue!(out, terminal::Clear(ClearType::FromCursorDown))?;
        }
        out.flush()?;
        Ok((height, scroll))
    }

    /// Writes `text` on row `*y` (cut to `cols`, in reverse video for headers) and moves down.
    fn line(
        out: &mut io::StdoutLock,
        y: &mut u16,
        cols: usize,
        text: &str,
        reverse: bool,
    ) -> io::Result<()> {
        let t = fit(text, cols);
        queue!(out, cursor::MoveTo(0, *y))?;
        if reverse {
            let pad = " ".repeat(cols - t.chars().count());
            queue!(
                out,
                SetAttribute(Attribute::Reverse),
                Print(t),
                Print(pad),
                SetAttribute(Attribute::Reset)
            )?;
        } else {
            queue!(out, Print(t), terminal::Clear(ClearType::UntilNewLine))?;
        }
        *y += 1;
        Ok(())
    }

    /// The first `cols` characters of `s`.
    fn fit(s: &str, cols: usize) -> String {
        s.chars().take(cols).collect()
    }

    fn hits(s: &Snapshot) -> u64 {
        [
            "outcome_hit",
            "outcome_stale",
            "outcome_revalidated",
            "outcome_collapsed",
        ]
        .iter()
        .map(|k| s.get(k))
        .sum()
    }

    fn us(v: u64) -> String {
        match v {
            0 => "–".to_string(),
            v if v < 1000 => format!("{v}µs"),
            v if v < 1_000_000 => format!("{:.1}ms", v as f64 / 1000.0),
            v => format!("{:.1}s", v as f64 / 1e6),
        }
    }

    /// The summary block: rates, ratio and percentiles over the last refresh (all-time before
    /// the second reading or when idle).
    pub(super) fn summary(v: &View, prev: Option<&View>) -> Vec<String> {
        let secs = prev.map_or(0.0, |p| v.time_ms.saturating_sub(p.time_ms) as f64 / 1000.0);
        let before = prev.and_then(|p| p.proxy.as_ref()).filter(|_| secs > 0.0);
        let mut out = Vec::new();
        out.push(format!(
            "shmproxy {} · instance {} · cached {}",
            env!("CARGO_PKG_VERSION"),
            v.instance,
            match &v.cached {
                Some((_, pid)) => format!("up (pid {pid})"),
                None => "DOWN".to_string(),
            }
        ));
        if let Some(p) = &v.proxy {
            let d = |k: &str| before.map(|b| p.get(k).wrapping_sub(b.get(k)));
            let rate =
                d("requests").map_or("–".to_string(), |n| format!("{:.1}", n as f64 / secs));
            let all_h = hits(p);
            let all_l = all_h + p.get("outcome_miss");
            let (h, l, when) = match before {
                Some(b) if all_l - (hits(b) + b.get("outcome_miss")) > 0 => (
                    all_h - hits(b),
                    all_l - (hits(b) + b.get("outcome_miss")),
                    "",
                ),
                _ => (all_h, all_l, " (all-time)"),
            };
            let ratio = if l > 0 {
                format!("{:.1}%{when}", 100.0 * h as f64 / l as f64)
            } else {
                "–".to_string()
            };
            out.push(format!(
                "requests {} total, {rate}/s · hit ratio {ratio}",
                p.get("requests")
            ));
            let delta: Vec<u64> = match before {
                Some(b) => p
                    .latency
                    .iter()
                    .zip(&b.latency)
                    .map(|(a, b)| a.wrapping_sub(*b))
                    .collect(),
                None => Vec::new(),
            };
            let (buckets, when) = if delta.iter().any(|&n| n > 0) {
                (&delta[..], "")
            } else {
                (&p.latency[..], " (all-time)")
            };
            let mut lat = format!(
                "latency p50 ≤ {} p99 ≤ {}{when}",
                us(stats::percentile(buckets, 0.5)),
                us(stats::percentile(buckets, 0.99))
            );
            if let Some((c, _)) = &v.cached {
                let pc = prev.and_then(|p| p.cached.as_ref()).filter(|_| secs > 0.0);
                if let Some((b, _)) = pc {
                    let n = c
                        .get("upstream_requests")
                        .wrapping_sub(b.get("upstream_requests"));
                    let t = c
                        .get("upstream_latency_us")
                        .wrapping_sub(b.get("upstream_latency_us"));
                    let _ = write!(
                        lat,
                        " · origin {:.1}/s avg {}",
                        n as f64 / secs,
                        t.checked_div(n).map_or("–".to_string(), us)
                    );
                }
            }
            out.push(lat);
        }
        if let Some(p) = &v.pool {
            out.push(format!(
                "pool {} × {} B: {} free, {} in use, {} quarantined",
                p.segments, p.segment_size, p.free, p.in_use, p.quarantined
            ));
        }
        if !v.workers.is_empty() {
            let active: i64 = v.workers.iter().map(|w| w.connections_active).sum();
            let idle: i64 = v.workers.iter().map(|w| w.connections_idle).sum();
            out.push(format!(
                "workers {} · connections {active} ({idle} idle)",
                v.workers.len()
            ));
        }
        if !v.sites.is_empty() || !v.servers.is_empty() {
            let down = v
                .servers
                .iter()
                .filter(|s| s.state == ServerState::Down)
                .count();
            out.push(format!(
                "sites {} · servers {} up, {down} down",
                v.sites.len(),
                v.servers.len() - down
            ));
        }
        out
    }

    /// One line per counter that changed since `prev` (every non-zero one before that).
    pub(super) fn changed(v: &View, prev: Option<&View>) -> Vec<String> {
        let secs = prev.map_or(0.0, |p| v.time_ms.saturating_sub(p.time_ms) as f64 / 1000.0);
        let regions = super::regions(v, prev);
        let mut out = Vec::new();
        for (region, now, before) in regions {
            let Some(now) = now else { continue };
            for (i, f) in FIELDS.iter().enumerate() {
                if !f.shown_in(region) {
                    continue;
                }
                let value = now.values[i];
                let was = before.map(|b| b.values[i]);
                if was.map_or(value == 0, |w| w == value) {
                    continue;
                }
                let (shown, rate) = match f.kind {
                    FieldKind::Counter => (
                        value.to_string(),
                        match was {
                            Some(w) if secs > 0.0 => {
                                format!("{:.1}", value.wrapping_sub(w) as f64 / secs)
                            }
                            _ => String::new(),
                        },
                    ),
                    FieldKind::Gauge => ((value as i64).to_string(), String::new()),
                };
                out.push(format!(
                    "{:<32} {shown:>12} {rate:>9}  {}",
                    format!("{}.{}", region.as_str(), f.name),
                    f.help
                ));
            }
        }
        out
    }
}

/// Each daemon's counters now and at `prev` (for rates).
fn regions<'a>(
    v: &'a View,
    prev: Option<&'a View>,
) -> [(Daemon, Option<&'a Snapshot>, Option<&'a Snapshot>); 2] {
    [
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
    ]
}

#[cfg(test)]
mod tests {
    use super::tui::{changed, summary};
    use common::stats::{PoolView, Snapshot, View, WorkerView, FIELDS, LATENCY_BUCKETS};

    fn snap(set: &[(&str, u64)], latency: &[(usize, u64)]) -> Snapshot {
        let mut s = Snapshot {
            values: vec![0; FIELDS.len()],
            latency: vec![0; LATENCY_BUCKETS],
        };
        for (k, v) in set {
            let i = FIELDS.iter().position(|f| f.name == *k).unwrap();
            s.values[i] = *v;
        }
        for (i, n) in latency {
            s.latency[*i] = *n;
        }
        s
    }

    fn view(time_ms: u64, proxy: Snapshot) -> View {
        View {
            instance: "t".into(),
            time_ms,
            pool: Some(PoolView {
                segments: 8,
                segment_size: 4096,
                free: 5,
                in_use: 2,
                quarantined: 1,
                states: "FFFFFUUQ".into(),
            }),
            proxy: Some(proxy),
            workers: vec![WorkerView {
                worker: 1,
                connections_active: 3,
                connections_idle: 1,
                requests: 0,
                bytes_out: 0,
            }],
            ..View::default()
        }
    }

    #[test]
    fn summary_rates_over_the_last_refresh() {
        let a = view(
            1_000,
            snap(
                &[("requests", 100), ("outcome_hit", 90), ("outcome_miss", 10)],
                &[(3, 100)],
            ),
        );
        let b = view(
            3_000,
            snap(
                &[
                    ("requests", 140),
                    ("outcome_hit", 120),
                    ("outcome_miss", 20),
                ],
                &[(3, 100), (10, 40)],
            ),
        );
        let s = summary(&b, Some(&a)).join("\n");
        assert!(s.contains("cached DOWN"), "{s}");
        assert!(s.contains("requests 140 total, 20.0/s"), "{s}");
        // 30 hits of 40 lookups in the interval, not 120/140 all-time.
        assert!(s.contains("hit ratio 75.0%"), "{s}");
        // Only the 40 new requests, all in bucket 10 (≤ 1024 µs).
        assert!(s.contains("p50 ≤ 1.0ms p99 ≤ 1.0ms"), "{s}");
        assert!(s.contains("2 in use, 1 quarantined"), "{s}");
        assert!(s.contains("workers 1 · connections 3 (1 idle)"), "{s}");
        let first = summary(&a, None).join("\n");
        assert!(first.contains("hit ratio 90.0% (all-time)"), "{first}");
    }

    #[test]
    fn changed_lists_only_counters_that_moved() {
        let a = view(1_000, snap(&[("requests", 5), ("bytes_out", 70)], &[]));
        let b = view(2_000, snap(&[("requests", 9), ("bytes_out", 70)], &[]));
        let rows = changed(&b, Some(&a));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(rows[0].starts_with("proxy.requests "), "{rows:?}");
        assert!(
            rows[0].contains(" 9 ") && rows[0].contains(" 4.0 "),
            "{rows:?}"
        );
        // Before a second reading: every non-zero counter, without a rate.
        let first = changed(&a, None);
        assert_eq!(first.len(), 2, "{first:?}");
    }
}

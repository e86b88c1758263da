//! `stress` — the segment-pool stress test of shmproxy.
//!
//! For each pool shape of a sweep (by default 1, 2, 7 and 64 segments × 1 KiB, 16 KiB and
//! 1 MiB segments) it starts the real `cached` (serving a generated document root) and `proxy`
//! (`--segments N --segment-size S`) as a fresh instance, runs C keep-alive clients that fetch a
//! weighted mix of files from 0 B to 16 MiB (plus files of segment size ± 1 and a missing file)
//! and verifies every answer's status, length and SHA-256. It then reads the pool from
//! `GET /__shmproxy/stats` (every segment must be free again), stops both daemons with SIGTERM
//! and checks that they exit 0 and leave no IPC object behind.
//!
//! It prints requests/s, p50/p99 latency, errors, checksum mismatches and the free segments per
//! shape and overall, and exits 1 on any error, mismatch or leak (2 on bad usage).
//! `--short` is the quick variant the test suite runs; the default (`--long`) is for operators.
//! The binaries are looked up next to this executable unless `--bin-dir` says otherwise.
//!
//! `--chaos` (see `chaos.rs`) instead runs one pool shape under load while it repeatedly
//! `kill -9`s a random proxy worker, `cached` or the proxy master and restores it, verifying
//! every completed response by SHA-256, then the pool and `/dev/shm`. With `--origin` the
//! files come from an origin server (`origin.rs`), so `cached` stores them in the arena and the
//! workers answer their hits from there; the arena is then audited too.
//!
//! `--pin-kills N` (see `pinkill.rs`) kills a worker holding arena pins N times, then checks
//! the arena's accounting against the stored objects and that the freed space is reused.

mod chaos;
mod files;
mod load;
mod origin;
mod pinkill;
mod progress;

use chaos::Victim;
use files::Doc;
use load::{Outcome, Plan};
use shmproxy_tests::harness::{self, Instance, PoolStats};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// How long the pool may take to show every segment free after the load.
const SETTLE: Duration = Duration::from_secs(2);
/// Daemon log lines shown for a failed shape.
const LOG_TAIL: usize = 15;

const USAGE: &str = "\
stress — segment-pool stress test of shmproxy (starts the real proxy and cached per pool shape)

Usage: stress [--short | --long] [OPTIONS]

Modes:
  --short                 quick run for the test suite: 3 shapes, 4 clients, 150 requests each,
                          the 16 MiB file fetched once per shape
  --long                  full sweep for operators (the default): 12 shapes, 8 clients,
                          1000 requests each (about 2.5 minutes in release on 2 cores)
  --chaos                 kill -9 under load: one shape (16x64K), 16 clients (half keep-alive,
                          half a fresh connection per request), files 0 B..4 MiB + a missing
                          one, while a random proxy worker, cached or proxy master is killed
                          and restored, 120 times (with --short: 15 times, < 1 min in debug);
                          every completed response SHA-256 verified, then the pool must be all
                          free and /dev/shm must only ever hold the instance's objects
  --chaos --origin        the same with the files served by an origin server (max-age=3600):
                          hits come from the shared arena, which is audited afterwards
  --pin-kills N           kill -9 a worker while it sends a pinned 15 MiB arena hit to a client
                          that stopped reading, N times (about 1.3 s each), then check the
                          arena holds exactly the stored objects, no pin, and reuses the space

Options (override the mode's values):
  --segments LIST         segment counts of the sweep, e.g. 1,2,7,64
  --segment-sizes LIST    segment sizes of the sweep, e.g. 1K,16K,1M
  --shapes LIST           explicit shapes instead of the sweep, e.g. 1x1K,64x1M
  --clients N             client threads (one keep-alive connection each)
  --requests N            requests per shape
  --duration SECS         run each shape this long (with --requests: whichever ends first)
  --workers N             proxy worker processes                       [2]
  --timeout SECS          socket timeout of every client read/write    [30]
  --max-time SECS         fail (and stop) when the whole run takes longer  [short: 180]
  --seed N                seed of the request mix                      [1]
  --bin-dir DIR           where `proxy` and `cached` are               [this executable's dir]
  --keep                  keep the temporary document root and logs
  -h, --help              this text

Chaos options (with --chaos; --shapes takes one shape, --clients and --timeout apply too):
  --kills N               kills in all                                 [120; short: 15]
  --kill-interval SECS    mean pause after a recovery before the next kill (jittered
                          0.5x..1.5x); cached also stays down 0..this long  [0.4; short: 0.25]
  --victims LIST          who may be killed, with optional weights,
                          e.g. worker=2,cached,master                  [worker,cached,master]
  --settle SECS           how long the pool may take to be all free after the load  [10]

Exit status: 0 all good, 1 an error, checksum mismatch or leak, 2 bad usage or set-up failure.";

/// One pool shape.
#[derive(Clone, Copy, Debug)]
struct Shape {
    segments: u64,
    segment_size: u64,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {}", self.segments, human_size(self.segment_size))
    }
}

/// Everything the command line decides.
#[derive(Debug)]
struct Opts {
    shapes: Vec<Shape>,
    clients: usize,
    requests: Option<u64>,
    duration: Option<Duration>,
    workers: u32,
    timeout: Duration,
    seed: u64,
    huge_weight: u32,
    max_time: Option<Duration>,
    bin_dir: PathBuf,
    keep: bool,
    /// `--chaos`: kill -9 under load instead of the sweep.
    chaos: Option<chaos::ChaosOpts>,
    /// `--pin-kills N`: kill workers holding pins instead of the sweep.
    pin_kills: Option<u64>,
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("stress: {e}\n(see stress --help)");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("stress: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// The mode's defaults, before options override them.
struct Mode {
    segments: &'static [u64],
    sizes: &'static [u64],
    shapes: Option<&'static [(u64, u64)]>,
    clients: usize,
    requests: u64,
    /// Weight of the 16 MiB file in the random mix (it is always fetched once per shape).
    huge_weight: u32,
    /// Fuse on the whole run (seconds).
    max_time: Option<u64>,
}

const SHORT: Mode = Mode {
    segments: &[],
    sizes: &[],
    shapes: Some(&[(1, 16 * KIB), (2, KIB), (64, MIB)]),
    clients: 4,
    requests: 150,
    huge_weight: 0,
    max_time: Some(180),
};

const LONG: Mode = Mode {
    segments: &[1, 2, 7, 64],
    sizes: &[KIB, 16 * KIB, MIB],
    shapes: None,
    clients: 8,
    requests: 1000,
    huge_weight: 1,
    max_time: None,
};

/// Parses the command line; `Ok(None)` for `--help`.
fn parse_args() -> Result<Option<Opts>, String> {
    use lexopt::prelude::*;
    let mut mode = &LONG;
    let (mut short, mut chaos) = (false, false);
    let (mut kills, mut kill_interval, mut victims, mut settle) = (None, None, None, None);
    let (mut segments, mut sizes, mut shapes) = (None, None, None);
    let (mut clients, mut requests, mut duration) = (None, None, None);
    let (mut workers, mut timeout, mut seed) = (2, None, 1);
    let (mut bin_dir, mut keep, mut max_time) = (None, false, None);
    let (mut origin, mut pin_kills) = (false, None);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("short") => (mode, short) = (&SHORT, true),
            Long("long") => (mode, short) = (&LONG, false),
            Long("chaos") => chaos = true,
            Long("origin") => origin = true,
            Long("pin-kills") => pin_kills = Some(parse_count(&value(&mut parser)?)?),
            Long("kills") => kills = Some(parse_count(&value(&mut parser)?)?),
            Long("kill-interval") => kill_interval = Some(parse_secs(&value(&mut parser)?)?),
            Long("victims") => victims = Some(chaos::parse_victims(&value(&mut parser)?)?),
            Long("settle") => settle = Some(parse_secs(&value(&mut parser)?)?),
            Long("segments") => segments = Some(parse_list(&value(&mut parser)?, parse_count)?),
            Long("segment-sizes") => sizes = Some(parse_list(&value(&mut parser)?, parse_size)?),
            Long("shapes") => shapes = Some(parse_list(&value(&mut parser)?, parse_shape)?),
            Long("clients") => clients = Some(parse_count(&value(&mut parser)?)? as usize),
            Long("requests") => requests = Some(parse_count(&value(&mut parser)?)?),
            Long("duration") => duration = Some(parse_secs(&value(&mut parser)?)?),
            Long("workers") => workers = parse_count(&value(&mut parser)?)? as u32,
            Long("timeout") => timeout = Some(parse_secs(&value(&mut parser)?)?),
            Long("max-time") => max_time = Some(parse_secs(&value(&mut parser)?)?),
            Long("seed") => seed = parse_number(&value(&mut parser)?)?,
            Long("bin-dir") => bin_dir = Some(PathBuf::from(value(&mut parser)?)),
            Long("keep") => keep = true,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let bin_dir = bin_dir.map_or_else(default_bin_dir, Ok)?;
    if origin && !chaos {
        return Err("--origin needs --chaos".into());
    }
    if pin_kills.is_some() && chaos {
        return Err("--pin-kills is a mode of its own, not one of --chaos".into());
    }
    if chaos {
        let m = if short { &chaos::SHORT } else { &chaos::LONG };
        if segments.is_some() || sizes.is_some() || requests.is_some() || duration.is_some() {
            return Err(
                "--chaos takes its shape from --shapes (one) and runs until its --kills are done"
                    .into(),
            );
        }
        let shape = match shapes.as_deref() {
            None => m.shape,
            Some([one]) => *one,
            Some(_) => return Err("--chaos runs one shape: give --shapes one value".into()),
        };
        let default_victims = Victim::ALL.iter().map(|&v| (v, 1)).collect();
        return Ok(Some(Opts {
            shapes: vec![shape],
            clients: clients.unwrap_or(m.clients),
            requests: None,
            duration: None,
            workers,
            timeout: timeout.unwrap_or(m.timeout),
            seed,
            huge_weight: 0,
            max_time: max_time.or(m.max_time),
            bin_dir,
            keep,
            chaos: Some(chaos::ChaosOpts {
                shape,
                kills: kills.unwrap_or(m.kills),
                interval: kill_interval.unwrap_or(m.interval),
                victims: victims.unwrap_or(default_victims),
                settle: settle.unwrap_or(m.settle),
                origin,
            }),
            pin_kills: None,
        }));
    }
    if kills.is_some() || kill_interval.is_some() || victims.is_some() || settle.is_some() {
        return Err("--kills, --kill-interval, --victims and --settle need --chaos".into());
    }
    let shapes = shapes.unwrap_or_else(|| sweep(mode, segments, sizes));
    if shapes.is_empty() {
        return Err("no pool shape to run".into());
    }
    Ok(Some(Opts {
        shapes,
        clients: clients.unwrap_or(mode.clients),
        // An explicit duration alone means "run for that long".
        requests: requests.or((duration.is_none()).then_some(mode.requests)),
        duration,
        workers,
        timeout: timeout.unwrap_or(Duration::from_secs(30)),
        seed,
        huge_weight: mode.huge_weight,
        max_time: max_time.or(mode.max_time.map(Duration::from_secs)),
        bin_dir,
        keep,
        chaos: None,
        pin_kills,
    }))
}

/// The shapes: explicit in the mode, or the product of segment counts and sizes.
fn sweep(mode: &Mode, segments: Option<Vec<u64>>, sizes: Option<Vec<u64>>) -> Vec<Shape> {
    let to_shape = |(segments, segment_size)| Shape {
        segments,
        segment_size,
    };
    if let (Some(fixed), None, None) = (mode.shapes, &segments, &sizes) {
        return fixed.iter().copied().map(to_shape).collect();
    }
    let segments = segments.unwrap_or_else(|| LONG.segments.to_vec());
    let sizes = sizes.unwrap_or_else(|| LONG.sizes.to_vec());
    sizes
        .iter()
        .flat_map(|&size| segments.iter().map(move |&n| to_shape((n, size))))
        .collect()
}

fn value(parser: &mut lexopt::Parser) -> Result<String, String> {
    parser
        .value()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|v| format!("not UTF-8: {v:?}"))
}

fn parse_list<T>(s: &str, item: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| item(p.trim()))
        .collect()
}

fn parse_number(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

/// A number ≥ 1.
fn parse_count(s: &str) -> Result<u64, String> {
    match parse_number(s)? {
        0 => Err(format!("must be at least 1: {s:?}")),
        n => Ok(n),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("not a positive number of seconds: {s:?}")),
    }
}

/// `4096`, `16K`, `16KiB`, `1M`, `1MiB` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let upper = s.to_ascii_uppercase();
    let digits = upper.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &upper[digits.len()..] {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        _ => return Err(format!("bad size {s:?} (use e.g. 4096, 16K, 1M)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 1)
        .ok_or_else(|| format!("bad size {s:?}"))
}

/// `7x16K`.
fn parse_shape(s: &str) -> Result<Shape, String> {
    let (n, size) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("bad shape {s:?} (use SEGMENTSxSIZE, e.g. 7x16K)"))?;
    Ok(Shape {
        segments: parse_count(n)?,
        segment_size: parse_size(size)?,
    })
}

/// The directory of this executable (where cargo puts `proxy` and `cached` too).
fn default_bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// What one shape came to.
struct ShapeReport {
    shape: Shape,
    outcome: Outcome,
    pool: Option<PoolStats>,
    problems: Vec<String>,
    logs: Vec<PathBuf>,
}

impl ShapeReport {
    fn new(shape: Shape) -> Self {
        ShapeReport {
            shape,
            outcome: Outcome::default(),
            pool: None,
            problems: Vec::new(),
            logs: Vec::new(),
        }
    }

    fn with_problem(mut self, problem: String) -> Self {
        self.problems.push(problem);
        self
    }

    fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.outcome.errors == 0
            && self.outcome.mismatches == 0
            && self.outcome.requests > 0
            && self.pool.is_some_and(|p| p.free == p.segments)
    }
}

/// Runs every shape and prints the reports; `Ok(false)` if anything failed.
fn run(opts: &Opts) -> Result<bool, String> {
    if let Some(c) = &opts.chaos {
        return chaos::run(opts, c);
    }
    if let Some(n) = opts.pin_kills {
        return pinkill::run(opts, n);
    }
    check_bins(&opts.bin_dir)?;
    let work = WorkDir::create()?;
    eprintln!(
        "stress: generating the document root in {}",
        work.root.display()
    );
    let base = files::base_docs(&work.root, opts.huge_weight)
        .map_err(|e| format!("writing files: {e}"))?;
    let deadline = opts.max_time.map(|t| Instant::now() + t);
    let mut reports = Vec::new();
    for (i, shape) in opts.shapes.iter().enumerate() {
        let label = format!("[{}/{}] {shape}", i + 1, opts.shapes.len());
        let report = if deadline.is_some_and(|d| Instant::now() >= d) {
            ShapeReport::new(*shape).with_problem("skipped: --max-time is up".into())
        } else {
            run_shape(opts, &work, &base, *shape, i, &label, deadline)
        };
        print_shape(&label, &report);
        reports.push(report);
    }
    let all_ok = print_overall(&reports);
    work.finish(all_ok, opts.keep);
    Ok(all_ok)
}

fn check_bins(dir: &Path) -> Result<(), String> {
    for name in ["proxy", "cached"] {
        if !dir.join(name).is_file() {
            return Err(format!(
                "{} not found: build with `cargo build --workspace --bins` or pass --bin-dir",
                dir.join(name).display()
            ));
        }
    }
    Ok(())
}

/// Starts the daemons for `shape`, loads them, checks the pool and stops them.
fn run_shape(
    opts: &Opts,
    work: &WorkDir,
    base: &[Doc],
    shape: Shape,
    index: usize,
    label: &str,
    deadline: Option<Instant>,
) -> ShapeReport {
    let mut report = ShapeReport::new(shape);
    let mut docs = base.to_vec();
    match files::shape_docs(&work.root, shape.segment_size) {
        Ok(extra) => docs.extend(extra),
        Err(e) => return report.with_problem(format!("writing files: {e}")),
    }
    let instance = format!("stress{}-{index}", std::process::id());
    let dir = work.logs.join(&instance);
    let started = instance_builder(opts, work, shape, &instance, &dir)
        .probe(probe_url(&docs))
        .try_start();
    report.logs = last_logs(&dir);
    let mut daemons = match started {
        Ok(d) => d,
        Err(e) => return report.with_problem(format!("start: {e}")),
    };
    let plan = Plan {
        docs: &docs,
        clients: opts.clients,
        requests: opts.requests,
        duration: opts.duration,
        seed: opts.seed.wrapping_add(index as u64),
        timeout: opts.timeout,
    };
    let addr = daemons.addr();
    let mut watch = || {
        daemons.check_alive()?;
        match deadline {
            Some(d) if Instant::now() >= d => Err("the run's --max-time is up".into()),
            _ => Ok(()),
        }
    };
    report.outcome = load::run(addr, &plan, label, &mut watch);
    if let Err(e) = daemons.check_alive() {
        report.problems.push(e);
    }
    match daemons.settle_pool(SETTLE, |p| p.free == p.segments) {
        Ok(pool) => report.pool = Some(pool),
        Err(e) => report.problems.push(format!("pool stats: {e}")),
    }
    if let Some(p) = report.pool.filter(|p| p.segments != shape.segments) {
        report.problems.push(format!(
            "stats report {} segments, expected {}",
            p.segments, shape.segments
        ));
    }
    report.problems.extend(daemons.stop());
    report.logs = last_logs(&dir);
    report
}

/// The daemons of one run: `cached` serving the document root and the proxy with the pool
/// `shape`, both with their own thread defaults, named `instance`, logs in `dir`.
fn instance_builder(
    opts: &Opts,
    work: &WorkDir,
    shape: Shape,
    instance: &str,
    dir: &Path,
) -> harness::Builder {
    Instance::builder()
        .name(instance)
        .dir(dir)
        .bin_dir(&opts.bin_dir)
        .root(&work.root)
        .workers(opts.workers)
        .segments(u32::try_from(shape.segments).unwrap_or(u32::MAX))
        .segment_size(usize::try_from(shape.segment_size).unwrap_or(usize::MAX))
        .default_threads()
}

/// The stderr of the latest `cached` and the latest proxy of an instance's log directory.
fn last_logs(dir: &Path) -> Vec<PathBuf> {
    let logs = harness::log_files(dir);
    ["-cached.stderr", "-proxy.stderr"]
        .iter()
        .filter_map(|end| {
            logs.iter()
                .rfind(|p| p.to_string_lossy().ends_with(end))
                .cloned()
        })
        .collect()
}

/// A small existing file, fetched to tell that `cached` is ready.
fn probe_url(docs: &[Doc]) -> &str {
    docs.iter()
        .find(|d| d.status == 200 && d.len > 0)
        .map_or("/", |d| d.url.as_str())
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

fn print_shape(label: &str, r: &ShapeReport) {
    let o = &r.outcome;
    println!("{label}: {}", if r.ok() { "OK" } else { "FAILED" });
    println!(
        "  {} requests in {:.2} s = {:.1} req/s, {:.1} MiB/s; latency p50 {}, p99 {}",
        o.requests,
        o.elapsed.as_secs_f64(),
        o.rate(),
        o.bytes as f64 / MIB as f64 / o.elapsed.as_secs_f64().max(1e-9),
        ms(o.percentile(50.0)),
        ms(o.percentile(99.0)),
    );
    println!(
        "  errors {}, checksum mismatches {}, busy (503, retried) {}; pool {}",
        o.errors,
        o.mismatches,
        o.busy,
        pool_text(r.pool)
    );
    for (msg, n) in &o.failures {
        match n {
            1 => println!("  ! {msg}"),
            n => println!("  ! {msg} ({n} times)"),
        }
    }
    for msg in &r.problems {
        println!("  ! {msg}");
    }
    if !r.ok() {
        for log in &r.logs {
            print_tail(log);
        }
    }
}

fn pool_text(pool: Option<PoolStats>) -> String {
    match pool {
        Some(p) => format!(
            "{}/{} segments free (in use {}, quarantined {})",
            p.free, p.segments, p.in_use, p.quarantined
        ),
        None => "unknown".into(),
    }
}

/// Prints the summary table; returns whether every shape passed.
fn print_overall(reports: &[ShapeReport]) -> bool {
    println!();
    println!(
        "{:<14} {:>8} {:>9} {:>9} {:>9} {:>6} {:>9} {:>6} {:>9}  result",
        "shape", "requests", "req/s", "p50", "p99", "errors", "mismatch", "busy", "pool free"
    );
    let mut total = Outcome::default();
    for r in reports {
        let free = r
            .pool
            .map_or("?".into(), |p| format!("{}/{}", p.free, p.segments));
        print_row(&r.shape.to_string(), &r.outcome, &free, r.ok());
        total.absorb(&r.outcome);
    }
    let all_ok = reports.iter().all(ShapeReport::ok);
    let pools: Vec<Option<PoolStats>> = reports.iter().map(|r| r.pool).collect();
    let free = if pools.iter().flatten().any(|p| p.free != p.segments) {
        "LEAK"
    } else if pools.iter().all(Option::is_some) {
        "all"
    } else {
        "?"
    };
    print_row("overall", &total, free, all_ok);
    all_ok
}

fn print_row(name: &str, o: &Outcome, free: &str, ok: bool) {
    println!(
        "{:<14} {:>8} {:>9.1} {:>9} {:>9} {:>6} {:>9} {:>6} {:>9}  {}",
        name,
        o.requests,
        o.rate(),
        ms(o.percentile(50.0)),
        ms(o.percentile(99.0)),
        o.errors,
        o.mismatches,
        o.busy,
        free,
        if ok { "OK" } else { "FAILED" }
    );
}

fn print_tail(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    println!("  --- last lines of {} ---", log.display());
    for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
        println!("  | {line}");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn human_size(n: u64) -> String {
    match n {
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directory
// ---------------------------------------------------------------------------------------------

/// `$TMPDIR/shmproxy-stress-<pid>/{root,logs}`.
struct WorkDir {
    base: PathBuf,
    root: PathBuf,
    logs: PathBuf,
}

impl WorkDir {
    fn create() -> Result<WorkDir, String> {
        let base = std::env::temp_dir().join(format!("shmproxy-stress-{}", std::process::id()));
        let root = base.join("root");
        let logs = base.join("logs");
        for dir in [&root, &logs] {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(WorkDir { base, root, logs })
    }

    /// Removes the document root; removes the logs too when `drop_logs`, else says where they
    /// are. `keep` keeps everything.
    fn finish(&self, drop_logs: bool, keep: bool) {
        if keep {
            println!("kept {}", self.base.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.root);
        if drop_logs {
            let _ = fs::remove_dir_all(&self.base);
        } else {
            println!("daemon logs kept in {}", self.logs.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shapes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16K"), Ok(16 * KIB));
        assert_eq!(parse_size("16kib"), Ok(16 * KIB));
        assert_eq!(parse_size("1M"), Ok(MIB));
        assert!(parse_size("1G").is_err());
        assert!(parse_size("").is_err());
        let shape = parse_shape("7x16K").unwrap();
        assert_eq!((shape.segments, shape.segment_size), (7, 16 * KIB));
        assert!(parse_shape("0x1K").is_err());
        assert_eq!(human_size(MIB), "1 MiB");
        assert_eq!(human_size(1000), "1000 B");
    }

    #[test]
    fn the_default_sweep_is_segments_times_sizes() {
        let shapes = sweep(&LONG, None, None);
        assert_eq!(shapes.len(), 12);
        let shapes = sweep(&SHORT, Some(vec![3]), None);
        assert_eq!(shapes.len(), 3);
        assert!(shapes.iter().all(|s| s.segments == 3));
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(load::percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(load::percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(load::percentile(&[7], 99.0), Duration::from_micros(7));
        assert_eq!(load::percentile(&[], 50.0), Duration::ZERO);
    }
}

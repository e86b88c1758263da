//! The load of one pool shape: C client threads, each on its own keep-alive connection, draw
//! request tickets from a shared counter (until the request count or the duration is reached),
//! fetch a file chosen by weight (the first tickets cover every file once), and verify its
//! status, length and SHA-256. A progress line on stderr (`progress.rs`) is refreshed while
//! they run.
//!
//! A `503` (pool exhausted, `cached` busy) is a legitimate, bounded answer: it is counted as
//! "busy" and retried with a back-off; only a request still refused after [`BUSY_GIVE_UP`] is
//! an error.

use crate::files::{Doc, SplitMix64};
use crate::progress::Progress;
use sha2::{Digest, Sha256};
use shmproxy_tests::client::Client;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long one request may keep being answered `503` before it counts as an error.
const BUSY_GIVE_UP: Duration = Duration::from_secs(60);
/// Failure messages kept for the report.
const MAX_FAILURES: usize = 20;

/// What the clients do for one shape.
pub struct Plan<'a> {
    pub docs: &'a [Doc],
    pub clients: usize,
    /// Stop after this many requests in all (if set).
    pub requests: Option<u64>,
    /// Stop after this long (if set).
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Socket timeout of every connect, read and write.
    pub timeout: Duration,
}

/// Counters shared by the clients and the progress line.
#[derive(Default)]
struct Tally {
    /// Set when the watch fails (a daemon died, the time is up): clients stop at once.
    abort: AtomicBool,
    issued: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
    busy: AtomicU64,
    bytes: AtomicU64,
    failures: Mutex<Vec<(String, u64)>>,
}

/// The result of one shape's load.
#[derive(Debug, Default)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub busy: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per-request latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Distinct failure messages (the first few) and how often each occurred.
    pub failures: Vec<(String, u64)>,
}

impl Outcome {
    /// The `p`-th percentile latency (0 < p ≤ 100).
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies_us, p)
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds another shape's outcome (for the overall summary).
    pub fn absorb(&mut self, other: &Outcome) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.mismatches += other.mismatches;
        self.busy += other.busy;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.latencies_us.extend_from_slice(&other.latencies_us);
        self.latencies_us.sort_unstable();
    }
}

/// The `p`-th percentile of sorted microsecond values.
pub fn percentile(sorted_us: &[u64], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    Duration::from_micros(sorted_us[rank.clamp(1, sorted_us.len()) - 1])
}

/// A check run with every progress tick (e.g. "both daemons still alive"); an `Err` aborts.
pub type Watch<'a> = dyn FnMut() -> Result<(), String> + Send + 'a;

/// Runs the plan against `addr`, showing progress labelled `label` and calling `watch` with
/// every refresh.
pub fn run(addr: SocketAddr, plan: &Plan, label: &str, watch: &mut Watch) -> Outcome {
    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let mut latencies = thread::scope(|s| {
        let progress = s.spawn(|| show_progress(label, plan, &tally, &stop, start, watch));
        let clients: Vec<_> = (0..plan.clients)
            .map(|id| {
                let tally = &tally;
                s.spawn(move || client_loop(id, addr, plan, deadline, tally))
            })
            .collect();
        let all: Vec<u64> = clients
            .into_iter()
            .flat_map(|c| c.join().expect("client thread panicked"))
            .collect();
        stop.store(true, Relaxed);
        progress.join().expect("progress thread panicked");
        all
    });
    latencies.sort_unstable();
    Outcome {
        requests: tally.done.load(Relaxed),
        errors: tally.errors.load(Relaxed),
        mismatches: tally.mismatches.load(Relaxed),
        busy: tally.busy.load(Relaxed),
        bytes: tally.bytes.load(Relaxed),
        elapsed: start.elapsed(),
        latencies_us: latencies,
        failures: tally.failures.into_inner().unwrap_or_default(),
    }
}

/// One client: fetch until the tickets run out; returns its latencies (µs).
fn client_loop(
    id: usize,
    addr: SocketAddr,
    plan: &Plan,
    deadline: Option<Instant>,
    tally: &Tally,
) -> Vec<u64> {
    let mut rng = SplitMix64(plan.seed ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut client = Client::new(addr, plan.timeout);
    let total_weight: u64 = plan.docs.iter().map(|d| u64::from(d.weight)).sum();
    let mut latencies = Vec::new();
    while let Some(ticket) = next_ticket(plan, deadline, tally) {
        let doc = pick(plan.docs, ticket, total_weight, &mut rng);
        let started = Instant::now();
        let ok = fetch(&mut client, doc, tally);
        latencies.push(started.elapsed().as_micros() as u64);
        tally.done.fetch_add(1, Relaxed);
        if !ok {
            thread::sleep(Duration::from_millis(10)); // do not spin against a dead daemon
        }
    }
    latencies
}

/// The next request number, or `None` when the count or the duration is reached.
fn next_ticket(plan: &Plan, deadline: Option<Instant>, tally: &Tally) -> Option<u64> {
    if tally.abort.load(Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let ticket = tally.issued.fetch_add(1, Relaxed);
    match plan.requests {
        Some(n) if ticket >= n => None,
        _ => Some(ticket),
    }
}

/// The first tickets take every file in turn; later ones draw by weight.
pub fn pick<'a>(docs: &'a [Doc], ticket: u64, total_weight: u64, rng: &mut SplitMix64) -> &'a Doc {
    if let Some(doc) = usize::try_from(ticket).ok().and_then(|t| docs.get(t)) {
        return doc;
    }
    let mut r = rng.below(total_weight);
    for doc in docs {
        let w = u64::from(doc.weight);
        if r < w {
            return doc;
        }
        r -= w;
    }
    &docs[docs.len() - 1]
}

/// What one answer amounted to.
enum Verdict {
    Good(u64),
    Busy,
    Mismatch(String),
}

/// Fetches `doc` (retrying `503`s) and records the result; `false` on an error or mismatch.
fn fetch(client: &mut Client, doc: &Doc, tally: &Tally) -> bool {
    let first = Instant::now();
    let mut backoff = Duration::from_millis(5);
    loop {
        match fetch_once(client, doc) {
            Ok(Verdict::Good(bytes)) => {
                tally.bytes.fetch_add(bytes, Relaxed);
                return true;
            }
            Ok(Verdict::Busy) if first.elapsed() < BUSY_GIVE_UP && !tally.abort.load(Relaxed) => {
                tally.busy.fetch_add(1, Relaxed);
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Ok(Verdict::Busy) => {
                let msg = format!("GET {}: still 503 after {:?}", doc.url, first.elapsed());
                record(tally, &tally.errors, msg);
                return false;
            }
            Ok(Verdict::Mismatch(msg)) => {
                record(tally, &tally.mismatches, msg);
                return false;
            }
            Err(msg) => {
                record(tally, &tally.errors, msg);
                return false;
            }
        }
    }
}

/// One GET of `doc`, checked against what it should be.
fn fetch_once(client: &mut Client, doc: &Doc) -> Result<Verdict, String> {
    let mut hasher = Sha256::new();
    let (head, len) = client
        .get(&doc.url, &mut |chunk| hasher.update(chunk))
        .map_err(|e| format!("GET {}: {e}", doc.url))?;
    if head.status == 503 && doc.status != 503 {
        return Ok(Verdict::Busy);
    }
    if head.status != doc.status {
        return Err(format!(
            "GET {}: status {}, expected {}",
            doc.url, head.status, doc.status
        ));
    }
    if doc.status != 200 {
        return Ok(Verdict::Good(len));
    }
    if len != doc.len {
        return Ok(Verdict::Mismatch(format!(
            "GET {}: {len} bytes, expected {}",
            doc.url, doc.len
        )));
    }
    if hasher.finalize().as_slice() != doc.sha256 {
        return Ok(Verdict::Mismatch(format!(
            "GET {}: SHA-256 differs (right length {len})",
            doc.url
        )));
    }
    Ok(Verdict::Good(len))
}

/// Counts a failure and keeps its message (the first few distinct ones, with a count).
fn record(tally: &Tally, counter: &AtomicU64, msg: String) {
    counter.fetch_add(1, Relaxed);
    let Ok(mut failures) = tally.failures.lock() else {
        return;
    };
    if let Some((_, n)) = failures.iter_mut().find(|(m, _)| *m == msg) {
        *n += 1;
    } else if failures.len() < MAX_FAILURES {
        failures.push((msg, 1));
    }
}

/// How often the progress line is refreshed and `watch` runs.
const REFRESH: Duration = Duration::from_millis(250);

/// Refreshes the progress line on stderr until `stop`, and runs `watch` with each refresh;
/// its first error aborts the load.
fn show_progress(
    label: &str,
    plan: &Plan,
    tally: &Tally,
    stop: &AtomicBool,
    start: Instant,
    watch: &mut Watch,
) {
    let mut progress = Progress::new(plan.requests, "requests");
    let mut next = Instant::now() + REFRESH;
    while !stop.load(Relaxed) {
        thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next += REFRESH;
        if let Err(e) = watch() {
            if !tally.abort.swap(true, Relaxed) {
                record(tally, &tally.errors, format!("aborted: {e}"));
            }
        }
        let done = tally.done.load(Relaxed);
        let detail = progress_detail(plan, tally, start);
        let total = plan.requests.map_or("?".into(), |n| n.to_string());
        let plain = || format!("{label}: {done}/{total} requests, {detail}");
        progress.update(label, done, detail.clone(), plain);
    }
    progress.finish();
}

fn progress_detail(plan: &Plan, tally: &Tally, start: Instant) -> String {
    let elapsed = start.elapsed().as_secs_f64();
    let time = match plan.duration {
        Some(d) => format!("{elapsed:.0}/{:.0} s", d.as_secs_f64()),
        None => format!("{elapsed:.0} s"),
    };
    format!(
        "{} errors, {} mismatches, {} busy, {:.1} MiB, {time}",
        tally.errors.load(Relaxed),
        tally.mismatches.load(Relaxed),
        tally.busy.load(Relaxed),
        tally.bytes.load(Relaxed) as f64 / (1024.0 * 1024.0),
    )
}

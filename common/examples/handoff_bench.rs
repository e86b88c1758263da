//! Micro-benchmark of the bare segment handoff, two processes, no sockets.
//!
//! The parent plays a proxy worker (leases a segment, writes a request head, rings the
//! doorbell, reads the answer); a forked child plays `cached` (creates the doorbell queue,
//! joins the segment, reads the request, writes the answer from memory). For each segment
//! size × chunk-slot count it reports:
//! - throughput of 1 MiB objects (bytes of body delivered to the reader per second, the whole
//!   per-object protocol included: acquire, doorbell, join, head, body, release), next to
//!   this machine's single-thread `memcpy` bandwidth measured in the same run;
//! - the round trip of one empty-body request through mq + segment (median, p99, p99.9).
//!
//! Run: `cargo run --release -p common --example handoff_bench -- [--seconds S]
//!       [--sizes 65536,262144,...] [--slots 2,4,8] [--object BYTES] [--rtt N] [--memcpy S]
//!       [--repeat N]`

use common::mq::Doorbells;
use common::pool::Pool;
use common::process::{fork_single_threaded, ProcId};
use common::protocol::{read_head, BodyLen, Doorbell, Kind, RequestHead, ResponseHead, MSG_SIZE};
use common::Names;
use nix::unistd::{ForkResult, Pid};
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const MIB: f64 = (1u64 << 20) as f64;
const RING: Duration = Duration::from_secs(1);

struct Args {
    seconds: f64,
    sizes: Vec<usize>,
    slots: Vec<u32>,
    object: usize,
    rtt: usize,
    /// Seconds per memcpy measurement (0: skip, e.g. under a profiler).
    memcpy: f64,
    /// Rounds over the whole matrix (medians are reported).
    repeat: usize,
}

fn parse_list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',')
        .map(|v| v.trim().parse().unwrap_or_else(|_| usage()))
        .collect()
}

fn usage() -> ! {
    eprintln!(
        "usage: handoff_bench [--seconds S] [--sizes B,B,..] [--slots K,K,..] [--object BYTES] [--rtt N] [--memcpy S] [--repeat N]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        seconds: 0.5,
        sizes: vec![64 << 10, 256 << 10, 1 << 20, 4 << 20],
        slots: vec![2, 4, 8],
        object: 1 << 20,
        rtt: 10_000,
        memcpy: 0.5,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--seconds" => a.seconds = v.parse().unwrap_or_else(|_| usage()),
            "--sizes" => a.sizes = parse_list(&v),
            "--slots" => a.slots = parse_list(&v),
            "--object" => a.object = v.parse().unwrap_or_else(|_| usage()),
            "--rtt" => a.rtt = v.parse().unwrap_or_else(|_| usage()),
            "--memcpy" => a.memcpy = v.parse().unwrap_or_else(|_| usage()),
            "--repeat" => a.repeat = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a
}

/// Single-thread copy bandwidth in MiB/s for buffers of `len` bytes, over about `seconds`.
fn memcpy_mib_s(len: usize, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return f64::NAN;
    }
    let src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; len];
    dst.copy_from_slice(&src); // fault the pages in
    let mut copied = 0usize;
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < seconds {
        for _ in 0..8 {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
            copied += len;
        }
    }
    copied as f64 / MIB / t.elapsed().as_secs_f64()
}

fn request(target: &str) -> Vec<u8> {
    RequestHead {
        method: "GET".into(),
        target: target.into(),
        version: 11,
        client: "127.0.0.1".into(),
        body: BodyLen::None,
        headers: vec![("Host".into(), b"bench".to_vec())],
    }
    .encode()
}

/// The `cached` side: answers doorbells until it gets `/stop` or the parent goes away.
fn cached_side(names: &Names, object: usize, parent: Pid) -> i32 {
    let queue = match Doorbells::create(&names.queue, common::mq::DEFAULT_CAPACITY) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("child: creating {}: {e}", names.queue);
            return 1;
        }
    };
    let body: Vec<u8> = (0..object).map(|i| (i * 31 % 251) as u8).collect();
    let mut pool: Option<Pool> = None;
    let mut buf = [0u8; MSG_SIZE];
    loop {
        if nix::unistd::getppid() != parent {
            return 1;
        }
        let n = match queue.recv(&mut buf, Duration::from_millis(200)) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("child: recv: {e}");
                return 1;
            }
        };
        let Ok(bell) = Doorbell::decode(&buf[..n]) else {
            eprintln!("child: bad doorbell");
            return 1;
        };
        if pool.as_ref().is_none_or(|p| p.id() != bell.pool_id) {
            pool = Pool::open(names).ok();
        }
        let Some(p) = pool.as_ref() else {
            eprintln!("child: cannot open the pool");
            return 1;
        };
        let mut lease = match p.join(bell.index, bell.generation, bell.request_id) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("child: join: {e}");
                return 1;
            }
        };
        let Ok(req) = read_head(&mut lease)
            .map_err(|e| e.to_string())
            .and_then(|raw| RequestHead::decode(&raw).map_err(|e| e.to_string()))
        else {
            eprintln!("child: bad request head");
            return 1;
        };
        let mut rest = Vec::new();
        if let Err(e) = lease.read_to_end(&mut rest) {
            eprintln!("child: reading the request: {e}");
            return 1;
        }
        let stop = req.target == "/stop";
        let payload: &[u8] = if req.target == "/object" { &body } else { &[] };
        let head = ResponseHead {
            status: 200,
            body: BodyLen::Exact(payload.len() as u64),
            outcome: common::http::CacheOutcome::Hit,
            ttl_ms: 0,
            upstream_status: 0,
            site: common::stats::NO_SITE,
            follow: None,
            headers: vec![("Content-Type".into(), b"application/octet-stream".to_vec())],
        }
        .encode();
        let sent = lease
            .write_all(&head)
            .and_then(|()| lease.write_all(payload))
            .and_then(|()| lease.finish());
        if let Err(e) = sent {
            eprintln!("child: writing the answer: {e}");
            return 1;
        }
        lease.complete();
        drop(lease);
        if stop {
            return 0;
        }
    }
}

/// The proxy side of one request: returns the body length received.
fn exchange(
    pool: &Pool,
    queue: &Doorbells,
    peer: ProcId,
    head: &[u8],
    id: u64,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    let mut lease = pool
        .acquire(Duration::from_secs(5), id)
        .map_err(std::io::Error::other)?;
    lease.set_peer(Some(peer));
    lease.set_timeout(Duration::from_secs(10));
    lease.write_all(head)?;
    lease.finish()?;
    let bell = Doorbell {
        kind: Kind::Request,
        index: lease.index(),
        generation: lease.generation(),
        request_id: id,
        pool_id: pool.id(),
    };
    queue.send(&bell.encode(), RING)?;
    let raw = read_head(&mut lease)?;
    let answer = ResponseHead::decode(&raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut total = 0u64;
    loop {
        let n = lease.read(buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if answer.body != BodyLen::Exact(total) || !lease.peer_finished() {
        return Err(std::io::Error::other("short answer"));
    }
    lease.complete();
    Ok(total)
}

struct Row {
    slot_size: usize,
    mib_s: f64,
    rtt_us: [f64; 3],
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run_one(a: &Args, segment_size: usize, slots: u32, tag: usize) -> Result<Row, String> {
    let names = Names::for_instance(&format!("hb{}-{tag}", std::process::id()));
    let pool = Pool::create(&names, 1, segment_size, slots).map_err(|e| e.to_string())?;
    let parent = nix::unistd::getpid();
    // The benchmark is single-threaded until here (no thread was ever spawned).
    let child = match fork_single_threaded().map_err(|e| e.to_string())? {
        ForkResult::Child => {
            // `exit` runs no destructors: the child never unlinks the parent's pool, while
            // `cached_side` drops (and so unlinks) the queue it created before returning.
            let rc = cached_side(&names, a.object, parent);
            std::process::exit(rc);
        }
        ForkResult::Parent { child } => child,
    };
    let result = (|| {
        let t = Instant::now();
        let queue = loop {
            match Doorbells::open(&names.queue) {
                Ok(q) => break q,
                Err(_) if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(format!("child queue: {e}")),
            }
        };
        let peer = ProcId {
            pid: child.as_raw() as u32,
            start: common::process::start_time(child.as_raw() as u32).unwrap_or(0),
        };
        let mut buf = vec![0u8; segment_size.clamp(16 << 10, 256 << 10)];
        let object = request("/object");
        let empty = request("/empty");
        let mut id = 0u64;
        let mut next = || {
            id += 1;
            id
        };
        // Warm-up (maps and faults every page of the segment on both sides).
        for _ in 0..20 {
            exchange(&pool, &queue, peer, &object, next(), &mut buf).map_err(|e| e.to_string())?;
        }
        let mut bytes = 0u64;
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < a.seconds {
            bytes += exchange(&pool, &queue, peer, &object, next(), &mut buf)
                .map_err(|e| e.to_string())?;
        }
        let mib_s = bytes as f64 / MIB / t.elapsed().as_secs_f64();
        for _ in 0..200 {
            exchange(&pool, &queue, peer, &empty, next(), &mut buf).map_err(|e| e.to_string())?;
        }
        let mut rtt = Vec::with_capacity(a.rtt);
        for _ in 0..a.rtt {
            let t = Instant::now();
            exchange(&pool, &queue, peer, &empty, next(), &mut buf).map_err(|e| e.to_string())?;
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rtt.sort_by(f64::total_cmp);
        // The child exits right after answering `/stop`: our last wait may see it gone
        // (`Lease::check` after a successful wait), so this answer's outcome is ignored.
        let stop = request("/stop");
        let _ = exchange(&pool, &queue, peer, &stop, next(), &mut buf);
        Ok(Row {
            slot_size: pool.slot_size(),
            mib_s,
            rtt_us: [
                percentile(&rtt, 0.5),
                percentile(&rtt, 0.99),
                percentile(&rtt, 0.999),
            ],
        })
    })();
    if result.is_err() {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        common::mq::remove(&names.queue);
    }
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let a = args();
    println!(
        "# segment handoff micro-benchmark (2 processes: proxy side reads, cached side writes)"
    );
    println!();
    println!(
        "- host: {} CPUs, load average {} at start; object {} bytes; {} s per throughput run, {} empty round trips, {} repeats per config",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        a.object,
        a.seconds,
        a.rtt,
        a.repeat
    );
    let m64 = memcpy_mib_s(64 << 20, a.memcpy);
    // (size, slots) -> per repeat: (handoff MiB/s, memcpy 1 MiB MiB/s just before, p50, p99, p99.9)
    let configs: Vec<(usize, u32)> = a
        .sizes
        .iter()
        .flat_map(|&size| a.slots.iter().map(move |&k| (size, k)))
        .collect();
    let mut runs: Vec<Vec<[f64; 5]>> = vec![Vec::new(); configs.len()];
    let mut slot_sizes = vec![0usize; configs.len()];
    let mut errors: Vec<Option<String>> = vec![None; configs.len()];
    let mut tag = 0;
    // Repeats go round the whole matrix, so slow phases of a noisy machine hit every config.
    for _ in 0..a.repeat {
        for (i, &(size, slots)) in configs.iter().enumerate() {
            tag += 1;
            let m1 = memcpy_mib_s(1 << 20, a.memcpy / 2.0);
            match run_one(&a, size, slots, tag) {
                Ok(r) => {
                    slot_sizes[i] = r.slot_size;
                    runs[i].push([r.mib_s, m1, r.rtt_us[0], r.rtt_us[1], r.rtt_us[2]]);
                }
                Err(e) => errors[i] = Some(e),
            }
        }
    }
    let m64_end = memcpy_mib_s(64 << 20, a.memcpy);
    let mut all_m1: Vec<f64> = runs.iter().flatten().map(|r| r[1]).collect();
    let m1 = median(&mut all_m1); // sorts
    let (m1_lo, m1_hi) = (
        all_m1.first().copied().unwrap_or(f64::NAN),
        all_m1.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "- memcpy (1 thread, `copy_from_slice`): 1 MiB buffers (cache-resident, measured before every run) median {:.0} MiB/s (min {:.0}, max {:.0}); 64 MiB buffers (DRAM) {:.0} MiB/s at start, {:.0} at end",
        m1,
        m1_lo,
        m1_hi,
        m64,
        m64_end
    );
    println!("- load average at end: {}", loadavg());
    println!("- handoff MiB/s = body bytes delivered per second, whole protocol per object (acquire, head, doorbell, join, body, release); medians over the repeats");
    println!();
    println!("| segment | slots | slot size | handoff MiB/s (min..max) | % of memcpy 1 MiB | % of memcpy 64 MiB | empty RTT p50 us | p99 us | p99.9 us |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, &(size, slots)) in configs.iter().enumerate() {
        if runs[i].is_empty() {
            let why = errors[i].as_deref().unwrap_or("no run");
            println!(
                "| {} KiB | {slots} | - | error: {why} | | | | | |",
                size >> 10
            );
            continue;
        }
        let col = |k: usize| -> Vec<f64> { runs[i].iter().map(|r| r[k]).collect() };
        let mut mib = col(0);
        let (lo, hi) = mib
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
        let mut pct: Vec<f64> = runs[i].iter().map(|r| 100.0 * r[0] / r[1]).collect();
        println!(
            "| {} KiB | {} | {} KiB | {:.0} ({:.0}..{:.0}) | {:.0}% | {:.0}% | {:.1} | {:.1} | {:.1} |",
            size >> 10,
            slots,
            slot_sizes[i] >> 10,
            median(&mut mib),
            lo,
            hi,
            median(&mut pct),
            100.0 * median(&mut mib) / m64.max(m64_end),
            median(&mut col(2)),
            median(&mut col(3)),
            median(&mut col(4)),
        );
        if let Some(e) = &errors[i] {
            println!("|  |  |  | (one repeat failed: {e}) | | | | | |");
        }
    }
}

//! `stress --pin-kills N` (issue 11, acceptance 3): `kill -9` of a worker while it holds arena
//! pins, N times, then proof that no space leaked.
//!
//! One `cached` + `proxy` pair with one worker, in origin mode ([`FileOrigin`]: the objects are
//! stored and published in the arena). After the readiness probe's 4 KiB object, a 15 MiB
//! object is stored (near the head of the arena's ring), then ten of 4 KiB. Each round opens a connection, asks for the big object
//! and stops reading: the worker's send fills the socket buffers and waits with the object
//! pinned. It is killed with SIGKILL, and the master must release its pins
//! (`arena_pins_released` grows) and start a replacement. Each worker lives at least a second
//! before it is killed, so the master's crash-loop backoff never starts.
//!
//! Afterwards: the big object is served whole, and the arena, checked from outside
//! ([`Arena::audit`]: rings, checksums, index and counters agree), holds exactly the twelve
//! stored objects, with no pin slot in use and no fill in progress. Then the freed space is
//! shown reusable: the big object is purged and six 12 MiB objects are stored, which need its
//! space and more (the ring has 64 MiB); each must be published (`arena_refused` stays 0) and answered
//! from the arena.

use crate::origin::FileOrigin;
use crate::{print_tail, Opts, WorkDir};
use common::arena::Arena;
use shmproxy_tests::client::{self, request_bytes};
use shmproxy_tests::harness::{self, Instance};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const SMALL: usize = 10;
/// A worker is killed no sooner than this after it appeared (quick deaths back off).
const LIFETIME: Duration = Duration::from_millis(1100);
const BOUND: Duration = Duration::from_secs(15);

pub fn run(opts: &Opts, kills: u64) -> Result<bool, String> {
    crate::check_bins(&opts.bin_dir)?;
    let work = WorkDir::create()?;
    let write = |rel: &str, len: usize, seed: u64| -> Result<Vec<u8>, String> {
        let body = harness::pattern(len, seed);
        std::fs::write(work.root.join(rel), &body).map_err(|e| format!("{rel}: {e}"))?;
        Ok(body)
    };
    let big = write("big.bin", 15 * MIB, 1)?;
    for i in 0..SMALL {
        write(&format!("s-{i}.bin"), 4096, 10 + i as u64)?;
    }
    write("probe.bin", 4096, 9)?;
    for i in 0..6 {
        write(&format!("fill-{i}.bin"), 12 * MIB, 20 + i as u64)?;
    }
    let origin = FileOrigin::start(&work.root)?;
    let instance = format!("pinkill{}", std::process::id());
    let dir = work.logs.join(&instance);
    let inst = Instance::builder()
        .name(&instance)
        .dir(&dir)
        .bin_dir(&opts.bin_dir)
        .origin(&origin.url())
        .workers(1)
        .cached_arg("--capacity")
        .cached_arg(&(64u64 << 20).to_string())
        .cached_arg("--max-object-size")
        .cached_arg(&(16u64 << 20).to_string())
        // Stored under the probe's own host: one more small object.
        .probe("/probe.bin")
        .try_start()?;
    let started = Instant::now();
    let result = rounds(&inst, &instance, &big, kills, &origin);
    let ok = match &result {
        Ok(lines) => {
            for l in lines {
                println!("pin-kills: {l}");
            }
            true
        }
        Err(e) => {
            println!("pin-kills: FAILED: {e}");
            false
        }
    };
    let problems = inst.stop();
    for p in &problems {
        println!("pin-kills: teardown: {p}");
    }
    let ok = ok && problems.is_empty();
    println!(
        "pin-kills: {} in {:.1} s",
        if ok { "PASSED" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if !ok {
        for log in crate::last_logs(&dir) {
            print_tail(&log);
        }
    }
    work.finish(ok, opts.keep);
    Ok(ok)
}

fn stat(inst: &Instance, section: &str, name: &str) -> Option<u64> {
    inst.try_stats().ok()?[section][name].as_u64()
}

fn wait_stat(
    inst: &Instance,
    section: &str,
    name: &str,
    done: impl Fn(u64) -> bool,
) -> Result<u64, String> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = stat(inst, section, name).filter(|&v| done(v)) {
            return Ok(v);
        }
        if t0.elapsed() > BOUND {
            return Err(format!(
                "{section}.{name} = {:?} after {BOUND:?}",
                stat(inst, section, name)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn get(inst: &Instance, target: &str) -> Result<Vec<u8>, String> {
    let r = client::fetch(inst.addr(), "GET", target, &[], b"");
    if r.status != 200 {
        return Err(format!("GET {target}: {}", r.describe()));
    }
    Ok(r.body)
}

/// The one worker, once it has lived [`LIFETIME`] (`seen`: when each pid was first seen).
fn mature_worker(inst: &Instance, seen: &mut Vec<(i32, Instant)>) -> Result<i32, String> {
    let t0 = Instant::now();
    loop {
        if let [w] = inst.workers()[..] {
            let at = match seen.iter().find(|(p, _)| *p == w) {
                Some(&(_, at)) => at,
                None => {
                    seen.push((w, Instant::now()));
                    Instant::now()
                }
            };
            if at.elapsed() >= LIFETIME {
                return Ok(w);
            }
        }
        if t0.elapsed() > BOUND {
            return Err(format!("no worker after {BOUND:?}: {:?}", inst.workers()));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn rounds(
    inst: &Instance,
    instance: &str,
    big: &[u8],
    kills: u64,
    origin: &FileOrigin,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    // The big object next to the probe's, near the head of the ring: a leaked pin would
    // hold the ring's reclamation there.
    get(inst, "/big.bin")?;
    wait_stat(inst, "cached", "arena_objects", |n| n == 2)?;
    for i in 0..SMALL {
        get(inst, &format!("/s-{i}.bin"))?;
    }
    let stored = wait_stat(inst, "cached", "arena_objects", |n| n == 2 + SMALL as u64)?;
    let fetches = origin.requests();
    let mut seen = Vec::new();
    let t0 = Instant::now();
    let mut released_total = 0;
    for round in 0..kills {
        let worker = mature_worker(inst, &mut seen)?;
        let released = wait_stat(inst, "proxy", "arena_pins_released", |_| true)?;
        let mut s = TcpStream::connect(inst.addr()).map_err(|e| format!("connect: {e}"))?;
        s.write_all(&request_bytes("GET", "/big.bin", &[], b""))
            .map_err(|e| format!("send: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut head = [0u8; 4096];
        match s.read(&mut head) {
            Ok(n) if n > 0 => {}
            other => return Err(format!("round {round}: no answer ({other:?})")),
        }
        // The client stops reading: the send fills the buffers and waits, the object pinned.
        thread::sleep(Duration::from_millis(150));
        if !harness::send_signal(worker, libc::SIGKILL) {
            return Err(format!(
                "round {round}: worker {worker} was gone before the kill"
            ));
        }
        let now = wait_stat(inst, "proxy", "arena_pins_released", |n| n > released)
            .map_err(|e| format!("round {round}: the dead worker's pin was not released: {e}"))?;
        released_total += now - released;
        drop(s);
    }
    lines.push(format!(
        "{kills} workers killed while sending a pinned 15 MiB hit, {released_total} pins released by the master, {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    mature_worker(inst, &mut seen)?;
    let body = get(inst, "/big.bin")?;
    if body != big {
        return Err("the big object came back wrong after the kills".into());
    }
    if origin.requests() != fetches {
        return Err(format!(
            "{} origin fetches during the kills (every answer should be an arena hit)",
            origin.requests() - fetches
        ));
    }
    let arena = Arena::open(&common::Names::for_instance(instance))
        .map_err(|e| format!("opening the arena: {e}"))?;
    let audit = arena.audit().map_err(|e| format!("arena audit: {e}"))?;
    let gauge = wait_stat(inst, "cached", "arena_bytes", |_| true)?;
    let pins = arena.pins_held();
    lines.push(format!(
        "arena after the kills: {} objects ({} stored), {} bytes (gauge {gauge}), {} garbage, {} being filled, {pins} pin slots in use",
        audit.live_objects, stored, audit.live_bytes, audit.garbage_bytes, audit.writing_bytes
    ));
    if audit.live_objects != stored
        || audit.live_bytes != gauge
        || audit.writing_bytes != 0
        || pins != 0
    {
        return Err(format!(
            "the arena's accounting does not match the stored objects: {audit:?}, {pins} pins"
        ));
    }
    // The space is reusable: with the big object gone, six 12 MiB objects need it (and evict).
    let p = client::fetch(inst.addr(), "PURGE", "/big.bin", &[], b"");
    if p.status != 200 {
        return Err(format!("PURGE: {}", p.describe()));
    }
    let hits = wait_stat(inst, "proxy", "arena_hits", |_| true)?;
    for i in 0..6 {
        let path = format!("/fill-{i}.bin");
        get(inst, &path)?;
        wait_stat(inst, "cached", "arena_objects", |_| true)?;
        let t1 = Instant::now();
        // Published once cached copied it: then a GET is an arena hit.
        loop {
            let before = stat(inst, "proxy", "arena_hits").unwrap_or(0);
            get(inst, &path)?;
            if stat(inst, "proxy", "arena_hits").unwrap_or(0) > before {
                break;
            }
            if t1.elapsed() > BOUND {
                return Err(format!("{path} never became an arena hit"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    let refused = stat(inst, "cached", "arena_refused").unwrap_or(u64::MAX);
    let evictions = stat(inst, "cached", "arena_evictions").unwrap_or(0);
    let audit = arena
        .audit()
        .map_err(|e| format!("arena audit after reuse: {e}"))?;
    lines.push(format!(
        "after PURGE of the big object: 6 × 12 MiB published and served from the arena ({} arena hits), {refused} refused, {evictions} evicted; arena {} objects, {} bytes, {} pin slots in use",
        stat(inst, "proxy", "arena_hits").unwrap_or(0) - hits,
        audit.live_objects,
        audit.live_bytes,
        arena.pins_held()
    ));
    if refused != 0 {
        return Err(format!("{refused} publishes found the arena's space held"));
    }
    Ok(lines)
}

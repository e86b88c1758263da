//! The master: binds the listener, creates the segment pool and the proxy stats region,
//! forks the workers (while single-threaded: signals arrive as flags, no helper threads),
//! passes each accepted connection to the least-loaded worker, reaps and replaces dead
//! workers (reclaiming their segments, with backoff), reclaims segments held by a dead
//! `cached`, and on SIGTERM/SIGINT stops accepting, lets workers finish, and unlinks its
//! IPC objects.

use crate::worker;
use anyhow::Context as _;
use common::config::ProxyConfig;
use common::pool::Pool;
use common::stats::{Counters, StatsRegion};
use common::{fdpass, process, Names};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a graceful stop waits for in-flight requests.
const STOP_DEADLINE: Duration = Duration::from_secs(4);

struct WorkerSlot {
    /// 1-based; also the worker's stats slot.
    index: usize,
    pid: Option<Pid>,
    chan: Option<OwnedFd>,
    started: Instant,
    /// Consecutive quick deaths, for backoff.
    quick_deaths: u32,
    respawn_at: Option<Instant>,
}

pub struct Shared {
    pub cfg: ProxyConfig,
    pub names: Names,
    pub pool: Pool,
    pub stats: StatsRegion,
}

pub fn run(cfg: ProxyConfig) -> anyhow::Result<()> {
    let names = Names::for_instance(&cfg.instance);
    let listener = TcpListener::bind(cfg.listen)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    listener.set_nonblocking(true)?;
    let pool = Pool::create(&names, cfg.segments, cfg.segment_size, cfg.chunk_slots)
        .context("cannot create the segment pool")?;
    let stats = StatsRegion::create(&names.stats_proxy, 1 + cfg.workers as usize)
        .context("cannot create the stats region")?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    log::info!(
        "instance {}: listening on {} with {} workers, pool {} × {} bytes",
        cfg.instance,
        listener.local_addr()?,
        cfg.workers,
        cfg.segments,
        cfg.segment_size
    );
    let shared = Arc::new(Shared {
        names,
        pool,
        stats,
        cfg,
    });
    let mut workers: Vec<WorkerSlot> = (1..=shared.cfg.workers as usize)
        .map(|index| WorkerSlot {
            index,
            pid: None,
            chan: None,
            started: Instant::now(),
            quick_deaths: 0,
            respawn_at: None,
        })
        .collect();
    for w in &mut workers {
        spawn(&shared, w, &listener)?;
    }
    let mut rr = 0usize;
    let mut last_housekeeping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            matches!(poll(&mut fds, PollTimeout::from(100u16)), Ok(n) if n > 0)
        };
        if ready {
            accept_batch(&shared, &listener, &workers, &mut rr);
        }
        reap(&shared, &mut workers);
        for w in workers.iter_mut().filter(|w| w.pid.is_none()) {
            if w.respawn_at.is_some_and(|t| Instant::now() >= t) {
                spawn(&shared, w, &listener)?;
                Counters::inc(&shared.stats.slot(0).worker_restarts);
            }
        }
        if last_housekeeping.elapsed() >= Duration::from_millis(250) {
            last_housekeeping = Instant::now();
            let n = shared.pool.reclaim_dead_cached();
            if n > 0 {
                log::warn!("reclaimed {n} segments from a cached that died");
                Counters::add(&shared.stats.slot(0).segments_reclaimed, u64::from(n));
            }
        }
    }
    log::info!("stopping: no new connections, waiting for in-flight requests");
    drop(listener);
    shutdown(&shared, &mut workers);
    log::info!("stopped");
    Ok(())
}

fn spawn(shared: &Shared, w: &mut WorkerSlot, listener: &TcpListener) -> anyhow::Result<()> {
    let (master_end, worker_end) = fdpass::pair()?;
    let slot = shared.stats.slot(w.index);
    slot.connections_active.store(0, Ordering::Relaxed);
    slot.fds_in_flight.store(0, Ordering::Relaxed);
    let master = nix::unistd::getpid();
    match process::fork_single_threaded()? {
        ForkResult::Child => {
            drop(master_end);
            // The listener fd stays open in the child, unused: only the master accepts.
            let _ = listener;
            let code = worker::run(shared, w.index, worker_end, master);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(worker_end);
            w.pid = Some(child);
            w.chan = Some(master_end);
            w.started = Instant::now();
            w.respawn_at = None;
            log::debug!("forked worker {} as pid {child}", w.index);
            Ok(())
        }
    }
}

fn load_of(shared: &Shared, w: &WorkerSlot) -> u64 {
    let s = shared.stats.slot(w.index);
    s.connections_active
        .load(Ordering::Relaxed)
        .wrapping_add(s.fds_in_flight.load(Ordering::Relaxed))
}

/// Accepts what is pending (bounded) and hands each connection to the least-loaded live
/// worker, round-robin among equals.
fn accept_batch(shared: &Shared, listener: &TcpListener, workers: &[WorkerSlot], rr: &mut usize) {
    for _ in 0..256 {
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("accept: {e}");
                return;
            }
        };
        Counters::inc(&shared.stats.slot(0).connections_accepted);
        let n = workers.len();
        let mut order: Vec<usize> = (0..n)
            .map(|k| (*rr + k) % n)
            .filter(|&i| workers[i].chan.is_some())
            .collect();
        *rr = (*rr + 1) % n;
        order.sort_by_key(|&i| load_of(shared, &workers[i]) as i64);
        let sent = order.iter().any(|&i| {
            let w = &workers[i];
            let chan = w.chan.as_ref().expect("filtered on live channels");
            Counters::inc(&shared.stats.slot(w.index).fds_in_flight);
            match fdpass::send_fd(chan, &stream) {
                Ok(()) => true,
                Err(e) => {
                    Counters::dec(&shared.stats.slot(w.index).fds_in_flight);
                    log::debug!("passing a connection to worker {}: {e}", w.index);
                    false
                }
            }
        });
        if !sent {
            log::warn!("no worker could take a connection; closing it");
        }
    }
}

/// Reaps dead workers: reclaims their segments and schedules a replacement (backoff
/// doubles while workers die within a second of starting, up to 5 s).
fn reap(shared: &Shared, workers: &mut [WorkerSlot]) {
    loop {
        let pid = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let Some(w) = workers.iter_mut().find(|w| w.pid == Some(pid)) else {
            continue;
        };
        let reclaimed = shared.pool.reclaim_worker(pid.as_raw() as u32);
        Counters::add(
            &shared.stats.slot(0).segments_reclaimed,
            u64::from(reclaimed),
        );
        w.pid = None;
        w.chan = None;
        w.quick_deaths = if w.started.elapsed() < Duration::from_secs(1) {
            w.quick_deaths + 1
        } else {
            0
        };
        let backoff =
            Duration::from_millis(50 * (1u64 << w.quick_deaths.min(7))).min(Duration::from_secs(5));
        w.respawn_at = Some(Instant::now() + backoff);
        log::warn!(
            "worker {} (pid {pid}) died; reclaimed {reclaimed} segments; restarting in {backoff:?}",
            w.index
        );
    }
}

fn shutdown(shared: &Shared, workers: &mut [WorkerSlot]) {
    for w in workers.iter_mut() {
        w.chan = None; // the worker sees its channel close
        if let Some(pid) = w.pid {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    while workers.iter().any(|w| w.pid.is_some()) && Instant::now() < deadline {
        for w in workers.iter_mut() {
            if let Some(pid) = w.pid {
                if !matches!(
                    waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                ) {
                    w.pid = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in workers.iter_mut() {
        if let Some(pid) = w.pid.take() {
            log::warn!("worker {} did not stop in time; killing it", w.index);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            shared.pool.reclaim_worker(pid.as_raw() as u32);
        }
    }
}

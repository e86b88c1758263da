//! The master: binds a listener per `proxy.listen` address (or takes them over from the running master with
//! `--upgrade`), creates the segment pool and the proxy stats region, forks the workers
//! (while single-threaded: signals arrive as flags, no helper threads), passes each accepted
//! connection to the least-loaded worker, reaps and replaces dead workers (reclaiming their
//! segments, with backoff), reclaims segments held by a dead `cached`, and has segments that
//! stayed free for `SEGMENT_IDLE` give their pages back (`Pool::trim_idle`).
//!
//! Signals (`common::signals`, installed before anything is bound or created, so a signal
//! at any moment of the start leaves nothing behind): SIGTERM/SIGINT/SIGQUIT stop accepting,
//! let the workers drain, unlink the IPC objects (and the cache arena, unless a live `cached`
//! owns it: it then unlinks it itself) and exit; SIGHUP re-reads the configuration
//! and replaces every worker (the old ones drain) without closing the listener; SIGUSR1 asks
//! the workers to reopen their access logs; the other signals that would kill are logged and
//! ignored. Under systemd the master reports READY, RELOADING and STOPPING (`common::service`).
//! Upgrade: a new master connects to this one's upgrade socket, receives the listening sockets
//! over `SCM_RIGHTS`, and this one hands over its IPC names, drains and exits.

use crate::cli::Source;
use crate::shared::Shared;
use crate::worker;
use anyhow::Context as _;
use common::config::ProxyConfig;
use common::pool::Pool;
use common::signals::Signals;
use common::stats::{Counters, StatsRegion};
use common::{fdpass, process, Names};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a stop waits for draining workers before killing them (they drain for 4 s).
const STOP_DEADLINE: Duration = Duration::from_millis(4500);
/// Accepted connections the master holds while the workers' channels are full; beyond this
/// it stops accepting and the kernel's listen backlog holds the rest.
const WAITING_MAX: usize = 1024;
/// A segment free this long gives its pages back (`Pool::trim_idle`): long enough that a
/// busy pool never pays the page faults again, short enough that a burst's memory goes soon.
const SEGMENT_IDLE: Duration = Duration::from_secs(5);
/// Connections found queued at one wake-up that start accept coalescing.
const COALESCE_ENTER: u64 = 8;

struct WorkerSlot {
    /// 1-based; also the worker's stats slot.
    index: usize,
    pid: Option<Pid>,
    chan: Option<OwnedFd>,
    /// The channel refused a message (its queue is full): no more until it is writable.
    chan_full: bool,
    started: Instant,
    /// Consecutive quick deaths, for backoff.
    quick_deaths: u32,
    respawn_at: Option<Instant>,
}

impl WorkerSlot {
    fn new(index: usize) -> WorkerSlot {
        WorkerSlot {
            index,
            pid: None,
            chan: None,
            chan_full: false,
            started: Instant::now(),
            quick_deaths: 0,
            respawn_at: None,
        }
    }
}

/// The master's own state.
struct Master {
    shared: Shared,
    source: Source,
    /// The listening sockets (one per `proxy.listen` address) in the master while it
    /// accepts; each forked child drops its copies.
    listeners: Vec<TcpListener>,
    upgrade: Option<OwnedFd>,
    workers: Vec<WorkerSlot>,
    /// When a drain before a stop ends (`proxy.drain_ms`), once the stop was requested.
    drain_until: Option<Instant>,
    /// Replaced workers still draining.
    retiring: Vec<Pid>,
    /// Accepted connections not yet passed to a worker (every channel was full), in order.
    waiting: std::collections::VecDeque<std::net::TcpStream>,
    rr: usize,
    /// Accepts wait `accept_coalesce` first (see [`Master::accept_burst`]).
    coalescing: bool,
}

pub fn run(cfg: ProxyConfig, source: Source) -> anyhow::Result<()> {
    // First: a SIGTERM from here on is a flag, so it cannot kill the master between the
    // creation of an IPC object and the guard that unlinks it.
    let signals = Signals::install()?;
    let names = Names::for_instance(&cfg.instance);
    let listeners: Vec<TcpListener> = if source.upgrade {
        let fds = fdpass::request_takeover(&cfg.instance, Duration::from_secs(10)).with_context(
            || {
                format!(
                    "--upgrade: no running master of instance {} handed over its socket",
                    cfg.instance
                )
            },
        )?;
        log::info!("took the listening sockets over from the running master");
        fds.into_iter().map(TcpListener::from).collect()
    } else {
        cfg.listen
            .iter()
            .map(|a| TcpListener::bind(a).with_context(|| format!("cannot listen on {a}")))
            .collect::<anyhow::Result<_>>()?
    };
    let mut listen_addrs = Vec::with_capacity(listeners.len());
    for l in &listeners {
        l.set_nonblocking(true)?;
        // Accepted connections inherit it: the workers need no call of their own.
        nix::sys::socket::setsockopt(l, nix::sys::socket::sockopt::TcpNoDelay, &true)?;
        listen_addrs.push(l.local_addr()?.to_string());
    }
    let listen_addr = listen_addrs.join(", ");
    if signals.stop_requested() {
        log::info!("stopped before serving");
        return Ok(());
    }
    let pool = Pool::create(&names, cfg.segments, cfg.segment_size, cfg.chunk_slots)
        .context("cannot create the segment pool")?;
    let stats = StatsRegion::create(&names.stats_proxy, 1 + cfg.workers as usize)
        .context("cannot create the stats region")?;
    log::info!(
        "instance {}: listening on {listen_addr} with {} workers, pool {} × {} bytes",
        cfg.instance,
        cfg.workers,
        cfg.segments,
        cfg.segment_size
    );
    let mut m = Master {
        workers: (1..=cfg.workers as usize).map(WorkerSlot::new).collect(),
        shared: Shared {
            names,
            pool,
            stats,
            cfg,
        },
        source,
        listeners,
        upgrade: None,
        retiring: Vec::new(),
        drain_until: None,
        waiting: std::collections::VecDeque::new(),
        rr: 0,
        coalescing: false,
    };
    m.bind_upgrade_socket();
    for i in 0..m.workers.len() {
        m.spawn(i, true)?;
    }
    common::service::ready(&format!("listening on {listen_addr}"));
    let handed_over = m.serve(&signals)?;
    common::service::stopping();
    log::info!("stopping: no new connections, waiting for in-flight requests");
    m.listeners.clear();
    m.upgrade = None;
    m.shutdown();
    if handed_over {
        log::info!("stopped; the new master serves on");
    } else {
        // The last one out unlinks the cache arena: first our pool name goes (a stopping
        // `cached` that looks finds no master), then the arena unless a live `cached` owns
        // it (`common::arena`, Lifetime).
        m.shared.pool.unlink_name();
        if common::arena::Arena::unlink_unowned(&m.shared.names) {
            log::info!("unlinked the cache arena (no cached owns it)");
        }
        log::info!("stopped");
    }
    Ok(())
}

impl Master {
    /// Has a requested stop come due? With `proxy.drain_ms`, a stop first raises the
    /// `draining` gauge (health answers 503, so a load balancer takes this node out) and
    /// comes due once the drain time has passed, the node serving all along.
    fn stop_due(&mut self, signals: &Signals) -> bool {
        if !signals.stop_requested() {
            return false;
        }
        let drain = self.shared.cfg.drain;
        if drain.is_zero() {
            return true;
        }
        let until = *self.drain_until.get_or_insert_with(|| {
            log::info!("stopping: draining for {drain:?} (health answers 503), still serving");
            self.shared
                .stats
                .slot(0)
                .draining
                .store(1, Ordering::Relaxed);
            Instant::now() + drain
        });
        Instant::now() >= until
    }

    /// The main loop; returns `true` when the listener was handed to a new master.
    fn serve(&mut self, signals: &Signals) -> anyhow::Result<bool> {
        let mut last_housekeeping = Instant::now();
        while !self.stop_due(signals) {
            let (accept, upgrade) = self.wait_ready();
            if accept {
                self.accept_burst();
            }
            if !self.waiting.is_empty() {
                self.dispatch();
            }
            if upgrade && self.hand_over() {
                return Ok(true);
            }
            self.reap();
            for i in 0..self.workers.len() {
                let w = &self.workers[i];
                if w.pid.is_none() && w.respawn_at.is_some_and(|t| Instant::now() >= t) {
                    self.spawn(i, true)?;
                    Counters::inc(&self.shared.stats.slot(0).worker_restarts);
                }
            }
            if signals.take_reload() {
                common::service::reloading();
                let result = self.reload();
                let listen: Vec<String> = self
                    .shared
                    .cfg
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                common::service::ready(&format!("reloaded; listening on {}", listen.join(", ")));
                result?;
            }
            signals.log_ignored();
            if signals.take_reopen() {
                // Workers follow the `log_reopens` counter (no signal needs to reach them).
                log::info!("SIGUSR1: workers reopen their access logs");
                Counters::inc(&self.shared.stats.slot(0).log_reopens);
            }
            if last_housekeeping.elapsed() >= Duration::from_millis(250) {
                last_housekeeping = Instant::now();
                let n = self.shared.pool.reclaim_dead_cached();
                if n > 0 {
                    log::warn!("reclaimed {n} segments from a cached that died");
                    Counters::add(&self.shared.stats.slot(0).segments_reclaimed, u64::from(n));
                }
                let n = self.shared.pool.trim_idle(SEGMENT_IDLE);
                Counters::add(&self.shared.stats.slot(0).segments_trimmed, u64::from(n));
                if self.upgrade.is_none() {
                    self.bind_upgrade_socket();
                }
            }
        }
        Ok(false)
    }

    /// Waits (at most 100 ms) for the listener (unless `waiting` is full), the upgrade socket
    /// and the full channels of workers while connections wait for them. Returns whether to
    /// accept and whether an upgrade knocks; channels with room again are no longer full.
    fn wait_ready(&mut self) -> (bool, bool) {
        let mut fds = Vec::with_capacity(2 + self.workers.len());
        let mut full = Vec::new();
        let accepting = self.waiting.len() < WAITING_MAX;
        if accepting {
            for l in &self.listeners {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
        }
        let listening = fds.len();
        if let Some(u) = &self.upgrade {
            fds.push(PollFd::new(u.as_fd(), PollFlags::POLLIN));
        }
        let first_chan = fds.len();
        if !self.waiting.is_empty() {
            for (i, w) in self.workers.iter().enumerate() {
                if let (true, Some(chan)) = (w.chan_full, &w.chan) {
                    fds.push(PollFd::new(chan.as_fd(), PollFlags::POLLOUT));
                    full.push(i);
                }
            }
        }
        if !matches!(poll(&mut fds, PollTimeout::from(100u16)), Ok(n) if n > 0) {
            return (false, false);
        }
        let has = |f: &PollFd, flag| f.revents().is_some_and(|r| r.intersects(flag));
        let accept = fds[..listening].iter().any(|f| has(f, PollFlags::POLLIN));
        let upgrade = self.upgrade.is_some() && has(&fds[first_chan - 1], PollFlags::POLLIN);
        // An error or hang-up counts too: the next send finds out, and the reaper follows.
        let ready = PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP;
        let writable: Vec<usize> = full
            .into_iter()
            .zip(&fds[first_chan..])
            .filter(|(_, f)| has(f, ready))
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        for i in writable {
            self.workers[i].chan_full = false;
        }
        (accept, upgrade)
    }

    /// Binds the upgrade socket; while a previous master of the instance still drains, the
    /// name is taken and we try again later.
    fn bind_upgrade_socket(&mut self) {
        match fdpass::upgrade_listener(&self.shared.cfg.instance) {
            Ok(fd) => self.upgrade = Some(fd),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => log::warn!("upgrade socket: {e}"),
        }
    }

    /// Forks worker `i`. `reset_gauges` clears the slot's connection gauges (the previous
    /// occupant died; a reload keeps them, since the old worker still counts down its own).
    fn spawn(&mut self, i: usize, reset_gauges: bool) -> anyhow::Result<()> {
        let (master_end, worker_end) = fdpass::pair()?;
        let index = self.workers[i].index;
        if reset_gauges {
            let slot = self.shared.stats.slot(index);
            slot.connections_active.store(0, Ordering::Relaxed);
            slot.connections_busy.store(0, Ordering::Relaxed);
            slot.fds_in_flight.store(0, Ordering::Relaxed);
        }
        let master = nix::unistd::getpid();
        match process::fork_single_threaded()? {
            ForkResult::Child => {
                drop(master_end);
                // Only the master accepts: a worker that outlives it must not keep the port.
                self.listeners.clear();
                drop(self.upgrade.take());
                let code = worker::run(&self.shared, index, worker_end, master);
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(worker_end);
                let w = &mut self.workers[i];
                w.pid = Some(child);
                w.chan = Some(master_end);
                w.chan_full = false;
                w.started = Instant::now();
                w.respawn_at = None;
                log::debug!("forked worker {index} as pid {child}");
                Ok(())
            }
        }
    }

    fn load_of(&self, w: &WorkerSlot) -> u64 {
        let s = self.shared.stats.slot(w.index);
        s.connections_active
            .load(Ordering::Relaxed)
            .wrapping_add(s.fds_in_flight.load(Ordering::Relaxed))
    }

    /// Accepts a burst. Under a storm of short connections every wake-up of the master, and
    /// of the worker it passes to, costs more than the connection it brings (README, "Where
    /// the time goes").
    /// So once one wake-up finds [`COALESCE_ENTER`] or more connections queued (that many
    /// clients arrive at once), each later wake-up first waits `proxy.accept_coalesce_us`
    /// for the burst to gather, then takes it whole and passes it in one message per
    /// worker; a wake-up that finds a single connection ends it. A lone client or a few
    /// never see the wait.
    fn accept_burst(&mut self) {
        let delay = self.shared.cfg.accept_coalesce;
        if self.coalescing && !delay.is_zero() {
            std::thread::sleep(delay);
            Counters::inc(&self.shared.stats.slot(0).accepts_coalesced);
        }
        let n = self.accept_batch();
        self.coalescing = if self.coalescing {
            n >= 2
        } else {
            n >= COALESCE_ENTER
        };
    }

    /// Accepts what is pending, up to what `waiting` may still hold; returns how many.
    fn accept_batch(&mut self) -> u64 {
        let mut n = 0u64;
        // One connection from each listener in turn, until none has more.
        let mut open: Vec<&TcpListener> = self.listeners.iter().collect();
        while !open.is_empty() && self.waiting.len() < WAITING_MAX {
            open.retain(|l| {
                if self.waiting.len() >= WAITING_MAX {
                    return true;
                }
                match fdpass::accept_nonblocking(l) {
                    Ok(stream) => {
                        self.waiting.push_back(stream);
                        n += 1;
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        false
                    }
                }
            });
        }
        Counters::add(&self.shared.stats.slot(0).connections_accepted, n);
        n
    }

    /// Passes the waiting connections on, in order, in as few messages as possible: each
    /// message (up to `MAX_FDS` connections, an even share of what waits) goes to the
    /// least-loaded worker whose channel has room, round-robin among equals. A full channel
    /// holds the rest back until it is writable again: nothing is dropped.
    fn dispatch(&mut self) {
        let master = self.shared.stats.slot(0);
        while !self.waiting.is_empty() {
            let live: Vec<usize> = (0..self.workers.len())
                .filter(|&i| self.workers[i].chan.is_some() && !self.workers[i].chan_full)
                .collect();
            let Some(i) = (0..live.len())
                .map(|k| live[(self.rr + k) % live.len()])
                .min_by_key(|&i| self.load_of(&self.workers[i]) as i64)
            else {
                break; // every channel is full (or no worker runs): wait
            };
            self.rr = (self.rr + 1) % live.len();
            let share = self.waiting.len().div_ceil(live.len()).min(fdpass::MAX_FDS);
            let w = &mut self.workers[i];
            let raw: Vec<_> = self
                .waiting
                .iter()
                .take(share)
                .map(|s| s.as_raw_fd())
                .collect();
            // Counted before the send: the worker counts each one down as it takes it.
            let in_flight = &self.shared.stats.slot(w.index).fds_in_flight;
            Counters::add(in_flight, share as u64);
            match fdpass::send_fds(w.chan.as_ref().expect("live"), &raw) {
                Ok(()) => {
                    // Our copies close here; the worker holds its own.
                    self.waiting.drain(..share);
                }
                Err(e) => {
                    Counters::add(in_flight, (share as u64).wrapping_neg());
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        Counters::inc(&master.channel_full);
                        w.chan_full = true;
                    } else {
                        // A broken channel: the worker is gone or going (closing our end
                        // retires it); the reaper replaces it, the others take these.
                        log::warn!("passing connections to worker {}: {e}", w.index);
                        w.chan = None;
                    }
                }
            }
        }
        master
            .connections_waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
    }

    /// Releases the arena pins of the reaped worker `pid` (one killed while it sent hits
    /// holds some), so `cached` may reuse their space. Mapping the arena opens a shared
    /// memory object and starts no thread: safe in the single-threaded master.
    fn release_pins(&self, pid: Pid) {
        if let Ok(arena) = common::arena::Arena::open(&self.shared.names) {
            let released = arena.release_worker(pid.as_raw() as u32);
            Counters::add(
                &self.shared.stats.slot(0).arena_pins_released,
                u64::from(released),
            );
        }
    }

    /// Reaps dead workers: reclaims their segments and schedules a replacement (backoff
    /// doubles while workers die within a second of starting, up to 5 s). Retired workers
    /// that finished draining are reaped here too.
    fn reap(&mut self) {
        loop {
            let pid = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => pid,
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let reclaimed = self.shared.pool.reclaim_worker(pid.as_raw() as u32);
            Counters::add(
                &self.shared.stats.slot(0).segments_reclaimed,
                u64::from(reclaimed),
            );
            self.release_pins(pid);
            if let Some(k) = self.retiring.iter().position(|p| *p == pid) {
                self.retiring.swap_remove(k);
                log::debug!("retired worker pid {pid} finished draining");
                continue;
            }
            let Some(w) = self.workers.iter_mut().find(|w| w.pid == Some(pid)) else {
                continue;
            };
            w.pid = None;
            w.chan = None;
            w.quick_deaths = if w.started.elapsed() < Duration::from_secs(1) {
                w.quick_deaths + 1
            } else {
                0
            };
            let backoff = Duration::from_millis(50 * (1u64 << w.quick_deaths.min(7)))
                .min(Duration::from_secs(5));
            w.respawn_at = Some(Instant::now() + backoff);
            log::warn!("worker {} (pid {pid}) died; reclaimed {reclaimed} segments; restarting in {backoff:?}", w.index);
        }
    }

    /// SIGHUP: re-reads the configuration and replaces every worker. The listener, the pool
    /// and the stats region stay; settings that live in them need a restart.
    fn reload(&mut self) -> anyhow::Result<()> {
        let mut cfg = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                log::error!("SIGHUP: {e}; keeping the running configuration");
                return Ok(());
            }
        };
        let old = &self.shared.cfg;
        let fixed = [
            ("instance", cfg.instance != old.instance),
            ("listen", cfg.listen != old.listen),
            ("segments", cfg.segments != old.segments),
            ("segment_size", cfg.segment_size != old.segment_size),
            ("chunk_slots", cfg.chunk_slots != old.chunk_slots),
            (
                "workers (above the count at start)",
                cfg.workers as usize >= self.shared.stats.slots(),
            ),
        ];
        for (key, changed) in fixed {
            if changed {
                log::warn!(
                    "SIGHUP: {key} cannot change while running; restart (or --upgrade) to apply it"
                );
            }
        }
        cfg.instance = old.instance.clone();
        cfg.listen = old.listen.clone();
        cfg.segments = old.segments;
        cfg.segment_size = old.segment_size;
        cfg.chunk_slots = old.chunk_slots;
        if cfg.workers as usize >= self.shared.stats.slots() {
            cfg.workers = old.workers;
        }
        self.shared.cfg = cfg;
        // Retire the running workers: closing the channel makes each one drain and exit.
        for w in &mut self.workers {
            w.chan = None;
            if let Some(pid) = w.pid.take() {
                self.retiring.push(pid);
            }
        }
        self.workers = (1..=self.shared.cfg.workers as usize)
            .map(WorkerSlot::new)
            .collect();
        for i in 0..self.workers.len() {
            self.spawn(i, false)?;
        }
        Counters::inc(&self.shared.stats.slot(0).reloads);
        log::info!(
            "SIGHUP: configuration reloaded; {} new workers, {} draining",
            self.workers.len(),
            self.retiring.len()
        );
        Ok(())
    }

    /// A new master asks for the listener: give it our IPC names (we keep our mappings, so
    /// our workers finish what they hold) and the socket. `true` once handed over.
    fn hand_over(&mut self) -> bool {
        let conn = match fdpass::accept_upgrade(self.upgrade.as_ref().expect("polled")) {
            Ok(Some(c)) => c,
            Ok(None) => return false,
            Err(e) => {
                log::warn!("upgrade request refused: {e}");
                return false;
            }
        };
        self.shared.pool.unlink_name();
        self.shared.stats.unlink_name();
        let fds: Vec<_> = self.listeners.iter().map(|l| l.as_raw_fd()).collect();
        match fdpass::send_fds(&conn, &fds) {
            Ok(()) => {
                Counters::inc(&self.shared.stats.slot(0).handovers);
                log::info!("handed the listening sockets to a new master");
                true
            }
            Err(e) => {
                // Our names are gone already; keep serving with what we have mapped.
                log::error!("handing the listening socket over failed: {e}");
                false
            }
        }
    }

    /// Retires every worker (they drain for up to 4 s), then kills stragglers. Connections
    /// still waiting for a channel get a second to be passed on first.
    fn shutdown(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.waiting.is_empty() && Instant::now() < deadline {
            self.wait_ready();
            self.dispatch();
        }
        if !self.waiting.is_empty() {
            log::warn!(
                "stopping: {} accepted connections could not be passed to a worker; closing them",
                self.waiting.len()
            );
            self.waiting.clear();
        }
        for w in &mut self.workers {
            w.chan = None;
            if let Some(pid) = w.pid.take() {
                self.retiring.push(pid);
            }
        }
        for pid in &self.retiring {
            let _ = kill(*pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while !self.retiring.is_empty() && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in std::mem::take(&mut self.retiring) {
            log::warn!("worker pid {pid} did not stop in time; killing it");
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            self.shared.pool.reclaim_worker(pid.as_raw() as u32);
            self.release_pins(pid);
        }
    }
}

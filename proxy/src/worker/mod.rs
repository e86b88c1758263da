//! A worker process: a fixed pool of `wN-execK` threads waits on one epoll set of client
//! connections (one-shot: each readiness event goes to exactly one thread, which serves the
//! connection and re-arms it), so an idle keep-alive connection costs a map entry, never a
//! thread, and a ready one is served by the thread that saw it, with no handoff. The channel
//! from the master is in the same set: the thread that sees connections arrive takes them
//! and serves their first requests itself (a new connection's request is usually there
//! already), with no wake-up of another thread. The control thread enforces the header and
//! idle timeouts and leads the drain when the worker is retired or stopped.
//!
//! One request's path goes down, never back up: this scheduler hands a ready connection
//! to `route` (routing of each request), which uses `status` (own endpoints), `arena` (fresh
//! hits from the shared arena), `fetch` (the exchange with cached) and `respond` (the one writer of answer heads), all
//! over `conn` (socket I/O and budgets). What they need of the worker is `ctx::Ctx`; a
//! thread about to block tells the scheduler through the `conn::Blocking` hook it gets
//! here, so nothing below calls up into this module.

mod accesslog;
mod arena;
mod conn;
mod ctx;
mod error;
mod fetch;
mod link;
mod respond;
mod route;
mod status;

use crate::shared::Shared;
use common::stats::Counters;
use common::supervise::{contain, supervised};
use common::{fdpass, process};
use conn::{Blocking, Conn, Io, Next, Scratch};
use ctx::Ctx;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::unistd::Pid;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a draining worker keeps serving its open connections.
const DRAIN_DEADLINE: Duration = Duration::from_secs(4);
/// A draining worker closes connections idle this long (busy ones get `Connection: close`).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// The epoll token of the channel from the master (connections count from 1).
const CHAN_TOKEN: u64 = 0;
/// Messages (of up to `fdpass::MAX_FDS` connections each) one thread takes from the channel
/// before re-arming it for the others.
const CHAN_BATCHES: usize = 4;

/// What the control thread and the exec threads share: the scheduler's state, and what
/// serving a request may use ([`Ctx`]).
struct Worker<'a> {
    cx: Ctx<'a>,
    /// Readiness of parked client connections and of the channel (one-shot).
    epoll: Epoll,
    /// The master's end passes connections on this.
    chan: OwnedFd,
    /// Set once the master closed the channel (the worker is retired or the master is gone).
    chan_closed: AtomicBool,
    next_token: AtomicU64,
    parked: Mutex<HashMap<u64, Conn>>,
    /// Connections taken out of `parked` and being served (changed under its lock).
    busy: AtomicUsize,
    /// Connections open in this worker, parked or being served (changed under `parked`'s
    /// lock when one is taken in): what `max_connections` bounds. A connection whose answer
    /// is out but which its thread has not parked yet is in neither `parked` nor idle.
    open: AtomicUsize,
    /// Set when the exec threads must leave.
    exit: AtomicBool,
}

impl Worker<'_> {
    fn counters(&self) -> &Counters {
        self.cx.counters()
    }

    /// Parks a connection until it is readable again. The map stays locked while the fd is
    /// armed, so the thread that gets its event finds the connection. A connection enters
    /// the epoll set at its first park: one answered and closed at once (`Connection:
    /// close`) costs no `epoll_ctl` at all.
    fn park(&self, mut conn: Conn) {
        let mut ev = EpollEvent::new(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
            conn.token,
        );
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let armed = if conn.in_epoll {
            self.epoll.modify(conn.stream.as_fd(), &mut ev)
        } else {
            self.epoll.add(conn.stream.as_fd(), ev)
        };
        if armed.is_ok() {
            conn.in_epoll = true;
            parked.insert(conn.token, conn);
        } else {
            drop(parked);
            self.close(conn);
        }
    }

    /// Closes a connection. Closing the descriptor takes it out of the epoll set (the worker
    /// holds the only reference: the master closed its copy after passing it).
    fn close(&self, conn: Conn) {
        Counters::dec(&self.counters().connections_active);
        self.open.fetch_sub(1, Ordering::Relaxed);
        drop(conn);
    }
}

/// Runs the worker; returns the process exit code.
pub fn run(shared: &Shared, index: usize, chan: OwnedFd, master: Pid) -> i32 {
    common::logger::rename(&format!("proxy-w{index}"));
    if !process::die_with_parent(master) {
        return 1;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if signal_hook::flag::register(sig, stop.clone()).is_err() {
            return 1;
        }
    }
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            log::error!("epoll: {e}");
            return 1;
        }
    };
    let w = Worker {
        cx: Ctx::new(shared, index),
        epoll,
        chan,
        chan_closed: AtomicBool::new(false),
        next_token: AtomicU64::new(CHAN_TOKEN + 1),
        parked: Mutex::new(HashMap::new()),
        busy: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        exit: AtomicBool::new(false),
    };
    if let Err(e) = w
        .epoll
        .add(w.chan.as_fd(), EpollEvent::new(CHAN_EVENTS, CHAN_TOKEN))
    {
        log::error!("epoll_ctl(channel): {e}");
        return 1;
    }
    let threads = shared.cfg.threads as usize;
    PERMITS.lock().free = (shared.cfg.pollers as usize).min(threads);
    std::thread::scope(|sc| {
        for k in 0..threads {
            let w = &w;
            let _ = std::thread::Builder::new()
                .name(format!("w{index}-exec{k}"))
                .spawn_scoped(sc, move || {
                    supervised(
                        &format!("w{index}-exec{k}"),
                        || {
                            // A thread that died between taking events and serving them
                            // may have held a poll permit: hand it on.
                            PERMITS.release();
                            // ... and may have taken the channel's one-shot event: re-arm
                            // it (harmless if another thread armed it already).
                            if !w.chan_closed.load(Ordering::Relaxed) {
                                rearm_chan(w);
                            }
                            Counters::inc(&w.counters().threads_restarted);
                        },
                        || exec_loop(w),
                    )
                });
        }
        supervised(
            "control",
            || Counters::inc(&w.counters().threads_restarted),
            || control_loop(&w, &stop),
        );
        w.exit.store(true, Ordering::Relaxed);
    });
    accesslog::flush();
    0
}

/// Poll permits: at most this many exec threads of the worker take readiness events at once.
/// The others wait for a permit, so a ready connection goes to a thread that is already
/// running (which takes it in its next batch) instead of waking a sleeping one per event;
/// a thread about to block on anything but epoll hands its permit on ([`give_back`]),
/// so many requests can still wait on cached or on slow clients at the same time.
///
/// Connections a thread took but must leave unserved (it is about to block) are handed
/// straight to waiting threads through `handoff`, each served at once by its own thread,
/// instead of going back to epoll for the one poller to pass out one at a time.
struct Permits {
    state: Mutex<PermitState>,
    changed: Condvar,
}

struct PermitState {
    free: usize,
    handoff: std::collections::VecDeque<u64>,
}

/// What a waiting exec thread got.
enum Turn {
    /// A poll permit: take readiness events.
    Poll,
    /// A connection handed over by a thread about to block: serve it.
    Serve(u64),
    /// Neither within the limit.
    Idle,
}

static PERMITS: Permits = Permits {
    state: Mutex::new(PermitState {
        free: 0,
        handoff: std::collections::VecDeque::new(),
    }),
    changed: Condvar::new(),
};

thread_local! {
    static HOLDS_PERMIT: Cell<bool> = const { Cell::new(false) };
}

impl Permits {
    fn lock(&self) -> std::sync::MutexGuard<'_, PermitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (at most `limit`) for a handed-over connection or a poll permit, in that order.
    fn next_turn(&self, limit: Duration) -> Turn {
        if HOLDS_PERMIT.get() {
            return Turn::Poll;
        }
        let mut st = self.lock();
        if st.free == 0 && st.handoff.is_empty() {
            st = self
                .changed
                .wait_timeout_while(st, limit, |s| s.free == 0 && s.handoff.is_empty())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if let Some(token) = st.handoff.pop_front() {
            return Turn::Serve(token);
        }
        if st.free == 0 {
            return Turn::Idle;
        }
        st.free -= 1;
        HOLDS_PERMIT.set(true);
        Turn::Poll
    }

    fn release(&self) {
        if HOLDS_PERMIT.replace(false) {
            self.lock().free += 1;
            self.changed.notify_one();
        }
    }

    /// Queues connections for waiting threads, waking one per connection.
    fn hand_off(&self, tokens: impl Iterator<Item = u64>) {
        let mut st = self.lock();
        let before = st.handoff.len();
        st.handoff.extend(tokens);
        let n = st.handoff.len() - before;
        drop(st);
        for _ in 0..n {
            self.changed.notify_one();
        }
    }
}

/// Takes the parked connection `token` for serving (counted busy under the map's lock).
fn take(w: &Worker, token: u64) -> Option<Conn> {
    let mut parked = w.parked.lock().unwrap_or_else(|e| e.into_inner());
    let conn = parked.remove(&token)?;
    w.busy.fetch_add(1, Ordering::Relaxed);
    Counters::inc(&w.counters().connections_busy);
    Some(conn)
}

/// Readiness events one exec thread takes at once. It serves them one after the other and
/// gives the rest back (re-arms them for other threads) before anything that may block.
const BATCH: usize = 16;

fn exec_loop(w: &Worker) {
    let cx = &w.cx;
    let mut scratch = Scratch::new(cx.shared.cfg.segment_size);
    let taken = Taken {
        w,
        deferred: RefCell::new(Vec::with_capacity(BATCH)),
    };
    let io = Io {
        cfg: &cx.shared.cfg,
        counters: cx.counters(),
        slow_waits: &cx.slow_waits,
        blocking: &taken,
    };
    let mut events = [EpollEvent::empty(); BATCH];
    while !w.exit.load(Ordering::Relaxed) {
        taken.deferred.borrow_mut().clear();
        match PERMITS.next_turn(Duration::from_millis(200)) {
            Turn::Poll => {
                let n = match w.epoll.wait(&mut events, EpollTimeout::from(200u16)) {
                    Ok(n) => n,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => {
                        // Never leave: a thread that returned would shrink the pool.
                        log::error!("epoll_wait: {e}");
                        PERMITS.release();
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                // Served from the end: keep the kernel's order.
                taken
                    .deferred
                    .borrow_mut()
                    .extend(events[..n].iter().rev().map(|ev| ev.data()));
            }
            Turn::Serve(token) => taken.deferred.borrow_mut().push(token),
            Turn::Idle => continue,
        }
        loop {
            // Borrowed for the pop only: serving may hand the rest off (`Taken::will_block`).
            let next = taken.deferred.borrow_mut().pop();
            let Some(token) = next else { break };
            if token == CHAN_TOKEN {
                receive_connections(w, &mut taken.deferred.borrow_mut());
                continue;
            }
            let Some(mut conn) = take(w, token) else {
                continue;
            };
            // A panic while serving costs this connection only: it gets a 500 if nothing
            // was answered yet, then is closed (a segment it leased was dropped on the way
            // out, which aborts that transfer); the thread goes on with the next one.
            match contain("a connection", || {
                route::serve_ready(cx, &io, &mut conn, &mut scratch)
            }) {
                Some(Next::Park) => w.park(conn),
                Some(Next::Close) => w.close(conn),
                None => {
                    Counters::inc(&w.counters().request_panics);
                    if conn.reply.status == 0 {
                        let _ = contain("a 500 answer", || {
                            respond::simple(&io, &mut conn, 500, "internal error")
                        });
                    }
                    w.close(conn);
                }
            }
            // Only now: a draining worker must not see "nothing busy, nothing parked" while
            // a connection is between the two.
            w.busy.fetch_sub(1, Ordering::Relaxed);
            Counters::dec(&w.counters().connections_busy);
        }
    }
}

/// The ready connections an exec thread took and has not served yet; as the thread's
/// [`Blocking`] hook it passes them on (with its poll permit) before the thread blocks.
struct Taken<'w> {
    w: &'w Worker<'w>,
    deferred: RefCell<Vec<u64>>,
}

impl Blocking for Taken<'_> {
    fn will_block(&self) {
        give_back(self.w, &mut self.deferred.borrow_mut());
    }
}

/// Passes on what this thread took but has not served yet, before it may block (on cached,
/// or on a slow client): its poll permit, the connections (each to a waiting thread, in
/// order) and the channel (re-armed in epoll).
fn give_back(w: &Worker, deferred: &mut Vec<u64>) {
    PERMITS.release();
    if deferred.is_empty() {
        return;
    }
    if deferred.contains(&CHAN_TOKEN) {
        deferred.retain(|&t| t != CHAN_TOKEN);
        rearm_chan(w);
    }
    Counters::add(&w.counters().connections_handed_off, deferred.len() as u64);
    // `deferred` is served from its end: the next in line is the last.
    PERMITS.hand_off(deferred.drain(..).rev());
}

/// Sweeps timeouts and leads the drain; returns when the worker may exit.
fn control_loop(w: &Worker, stop: &AtomicBool) {
    let mut last_sweep = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if drain_deadline.is_none()
            && (stop.load(Ordering::Relaxed) || w.chan_closed.load(Ordering::Relaxed))
        {
            // Retired (reload, upgrade) or stopping: answer what comes on open connections
            // with `Connection: close`, close idle ones, leave when nothing is left.
            drain_deadline = Some(Instant::now() + DRAIN_DEADLINE);
            w.cx.draining.store(true, Ordering::Relaxed);
        }
        if let Some(deadline) = drain_deadline {
            close_idle(w, DRAIN_IDLE);
            let idle = {
                let parked = w.parked.lock().unwrap_or_else(|e| e.into_inner());
                parked.is_empty() && w.busy.load(Ordering::Relaxed) == 0
            };
            if idle || Instant::now() >= deadline {
                close_idle(w, Duration::ZERO);
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        if last_sweep.elapsed() >= Duration::from_millis(200) {
            last_sweep = Instant::now();
            sweep(w);
        }
    }
}

const CHAN_EVENTS: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLONESHOT);

/// Arms the channel for the next thread that waits on epoll; a channel that cannot be armed
/// counts as closed (the worker drains).
fn rearm_chan(w: &Worker) {
    let mut ev = EpollEvent::new(CHAN_EVENTS, CHAN_TOKEN);
    if let Err(e) = w.epoll.modify(w.chan.as_fd(), &mut ev) {
        log::error!("re-arming the channel: {e}");
        w.chan_closed.store(true, Ordering::Relaxed);
    }
}

/// Takes the connections the master passed (a bounded number of messages, then the channel
/// is re-armed for the other threads) and queues them in `deferred` to be served by this
/// thread in arrival order; marks the channel closed once the master closed it.
fn receive_connections(w: &Worker, deferred: &mut Vec<u64>) {
    let mut fresh = Vec::new();
    for _ in 0..CHAN_BATCHES {
        match fdpass::recv_fds(&w.chan) {
            Ok(Some(fds)) => {
                fresh.extend(
                    fds.into_iter()
                        .filter_map(|fd| adopt(w, std::net::TcpStream::from(fd))),
                );
            }
            Ok(None) => {
                w.chan_closed.store(true, Ordering::Relaxed);
                let _ = w.epoll.delete(w.chan.as_fd());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("receiving connections: {e}");
                Counters::inc(&w.counters().messages_rejected);
                break;
            }
        }
    }
    if !w.chan_closed.load(Ordering::Relaxed) {
        rearm_chan(w);
    }
    deferred.extend(fresh.into_iter().rev());
}

/// Takes in a connection passed by the master (not yet in the epoll set): the receiving
/// thread serves its first request (or parks it when none is there yet, or gives it back
/// before blocking). Returns its token, or `None` if it was refused.
fn adopt(w: &Worker, stream: std::net::TcpStream) -> Option<u64> {
    Counters::dec(&w.counters().fds_in_flight);
    Counters::inc(&w.counters().connections_active);
    let mut parked = w.parked.lock().unwrap_or_else(|e| e.into_inner());
    // Every open connection counts, not only the parked ones: one being served is out of
    // the map.
    if w.open.load(Ordering::Relaxed) >= w.cx.shared.cfg.max_connections {
        drop(parked);
        Counters::dec(&w.counters().connections_active);
        Counters::inc(&w.counters().connections_refused);
        return None;
    }
    w.open.fetch_add(1, Ordering::Relaxed);
    // The master accepted it non-blocking, with TCP_NODELAY from the listener.
    let token = w.next_token.fetch_add(1, Ordering::Relaxed);
    parked.insert(token, Conn::new(stream, token));
    Some(token)
}

/// Closes parked connections past their header or idle timeout (slowloris gets a 408).
fn sweep(w: &Worker) {
    let cfg = &w.cx.shared.cfg;
    let now = Instant::now();
    let expired = take_parked(w, |c| match c.head_started {
        Some(t) => now.duration_since(t) >= cfg.header_timeout,
        None => now.duration_since(c.last_active) >= cfg.idle_timeout,
    });
    for mut c in expired {
        if c.head_started.is_some() {
            Counters::inc(&w.counters().timeouts_header);
            respond::simple_nowait(
                &cfg.node,
                w.counters(),
                &mut c,
                408,
                "request head not received in time",
            );
        } else {
            Counters::inc(&w.counters().timeouts_idle);
        }
        w.close(c);
    }
}

/// Closes parked connections idle for at least `idle` with no partial request.
fn close_idle(w: &Worker, idle: Duration) {
    let now = Instant::now();
    let victims = take_parked(w, |c| {
        idle.is_zero() || (c.head_started.is_none() && now.duration_since(c.last_active) >= idle)
    });
    for c in victims {
        w.close(c);
    }
}

/// Takes the parked connections `pick` chooses out of the map (for closing).
fn take_parked(w: &Worker, pick: impl Fn(&Conn) -> bool) -> Vec<Conn> {
    let mut parked = w.parked.lock().unwrap_or_else(|e| e.into_inner());
    let tokens: Vec<u64> = parked
        .iter()
        .filter(|(_, c)| pick(c))
        .map(|(t, _)| *t)
        .collect();
    tokens
        .into_iter()
        .filter_map(|t| parked.remove(&t))
        .collect()
}

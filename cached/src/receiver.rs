//! The daemon's frame: announces itself (stats region), creates the doorbell queue, starts
//! the threads, and stops cleanly on SIGTERM/SIGINT/SIGQUIT, unlinking what it created.
//! The signal handlers (`common::signals`) are installed before any IPC object exists.
//!
//! Threads: two receivers (`cd-recv0`, the main thread, and `cd-recv1`) take doorbells off
//! the queue and hand each to an idle worker (`cd-workN`, `cached.threads` of them), which
//! validates it, joins the named segment and serves the request in it from start to end
//! (`serve`); `cd-refreshN` run the queued background refreshes (`revalidate`); one
//! `cd-health` per origin server checks it (`upstream::health`); `cd-signal` answers the
//! other signals: SIGHUP re-reads the configuration, applies the keys that may change while running
//! and logs the others as needing a restart, SIGUSR1 is logged (no log file to reopen), the rest are logged and ignored.

use crate::cli::Source;
use crate::ctx::Ctx;
use crate::refresh;
use crate::revalidate;
use crate::serve;
use crate::source::disk;
use crate::upstream::{self, Upstreams};
use anyhow::Context as _;
use common::config::CachedConfig;
use common::mq::Doorbells;
use common::protocol::{Doorbell, Kind, MSG_SIZE};
use common::signals::Signals;
use common::stats::{Counters, StatsRegion};
use common::supervise::{contain, supervised};
use common::Names;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn run(cfg: CachedConfig, source: Source) -> anyhow::Result<()> {
    // First: from here on a signal is a flag, never a death that leaves objects behind.
    let signals = Signals::install()?;
    let shutdown = signals.stop.clone();
    let names = Names::for_instance(&cfg.instance);
    let root = if cfg.sites.is_empty() {
        disk::document_root(&cfg)?
    } else {
        PathBuf::new()
    };
    let stats = Arc::new(
        StatsRegion::create_with_tables(&names.stats_cached, 1)
            .with_context(|| "cannot announce cached")?,
    );
    let queue = Doorbells::create(&names.queue, cfg.queue_capacity)
        .with_context(|| format!("cannot create the request queue {}", names.queue))?;
    let upstreams = match cfg.sites.is_empty() {
        true => None,
        false => Some(Arc::new(Upstreams::new(&cfg, &stats)?)),
    };
    for s in &cfg.sites {
        let servers: Vec<String> = s.origins.iter().map(|o| o.to_string()).collect();
        log::info!(
            "instance {}: site {} ({}): {}",
            cfg.instance,
            s.name,
            if s.is_default() {
                "every other host".to_string()
            } else {
                s.hosts.join(" ")
            },
            servers.join(" ")
        );
    }
    if cfg.sites.is_empty() {
        log::info!("instance {}: serving {}", cfg.instance, root.display());
    }
    for w in cfg.warnings() {
        log::warn!("{w}");
    }
    let checkers = upstreams
        .as_ref()
        .map(|u| upstream::health::start(u, &shutdown))
        .unwrap_or_default();
    let ctx = Arc::new(Ctx::new(cfg, names, stats, root, upstreams).with_arena());
    let refreshers = start_refreshers(&ctx, &shutdown)?;
    let queue = Arc::new(queue);
    // Two threads wait on the queue and hand each doorbell to an idle worker thread: a
    // doorbell wakes one worker, not every thread of the pool polling the queue.
    let (tx, rx) = crossbeam_channel::bounded::<Doorbell>(ctx.cfg().threads as usize);
    // Supervised: a panic while serving one doorbell costs that request only (its lease is
    // dropped on the way out, which aborts the transfer and releases or quarantines the
    // segment); a panic anywhere else in a thread's loop starts the loop again.
    let workers: Vec<_> = (0..ctx.cfg().threads)
        .map(|i| {
            let rx = rx.clone();
            spawn(&ctx, format!("cd-work{i}"), move |ctx| {
                while let Ok(bell) = rx.recv() {
                    if contain("a request", || handle(ctx, bell)).is_none() {
                        Counters::inc(&ctx.counters().request_panics);
                        Counters::inc(&ctx.counters().transfers_aborted);
                    }
                }
            })
        })
        .collect::<Result<_, _>>()?;
    drop(rx);
    // A second receiver covers for the first while the scheduler keeps it off a CPU.
    let second = {
        let (ctx, queue, shutdown, tx) = (ctx.clone(), queue.clone(), shutdown.clone(), tx.clone());
        std::thread::Builder::new()
            .name("cd-recv1".into())
            .spawn(move || supervised_receive(&ctx, &queue, &shutdown, &tx, "cd-recv1"))?
    };
    let signal_thread = {
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("cd-signal".into())
            .spawn(move || answer_signals(&ctx, &signals, &source))?
    };
    common::service::ready(&format!("instance {}", ctx.cfg().instance));
    supervised_receive(&ctx, &queue, &shutdown, &tx, "cd-recv0");
    common::service::stopping();
    let _ = second.join();
    let _ = signal_thread.join();
    drop(tx); // workers finish their transfers, then see the channel close
    for t in workers.into_iter().chain(checkers).chain(refreshers) {
        let _ = t.join();
    }
    log::info!("stopped");
    Ok(())
}

/// Starts thread `name` running `body`, supervised: a panic in `body` counts a restart
/// and runs it again.
fn spawn(
    ctx: &Arc<Ctx>,
    name: String,
    mut body: impl FnMut(&Ctx) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let ctx = Arc::clone(ctx);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            supervised(
                &name,
                || Counters::inc(&ctx.counters().threads_restarted),
                || body(&ctx),
            )
        })
}

/// Starts the `cd-refresh` threads, which run the queued background refreshes until
/// `stop` is set.
fn start_refreshers(
    ctx: &Arc<Ctx>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..refresh::THREADS)
        .map(|i| {
            let stop = Arc::clone(stop);
            spawn(ctx, format!("cd-refresh{i}"), move |ctx| {
                while !stop.load(Ordering::Relaxed) {
                    // The key is released when `_taken` drops, a panic included.
                    if let Some((job, _taken)) = ctx.refreshes.next(Duration::from_millis(200)) {
                        revalidate::in_background(ctx, &job);
                    }
                }
            })
        })
        .collect()
}

/// The `cd-signal` thread: answers SIGHUP, SIGUSR1 and the ignored signals within 100 ms,
/// until the stop flag is set.
fn answer_signals(ctx: &Ctx, signals: &Signals, source: &Source) {
    while !signals.stop_requested() {
        if signals.take_reload() {
            common::service::reloading();
            reload(ctx, source);
            common::service::ready(&format!("instance {}", ctx.cfg().instance));
        }
        if signals.take_reopen() {
            log::info!("SIGUSR1: cached writes no log file (it logs to stderr): nothing to reopen");
        }
        signals.log_ignored();
        if let Some(a) = &ctx.arena {
            a.trim_if_idle(ctx.counters());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGHUP: re-reads the configuration. A bad one is logged and the running one kept; a good
/// one is applied as far as it can be while running (`CachedConfig::reloaded`: the keys that
/// decide how answers are stored and served) and each other changed key is logged as needing
/// a restart. The cache stays warm either way. Files under the document root need no reload:
/// they are revalidated as they change.
fn reload(ctx: &Ctx, source: &Source) {
    let new = match source.load() {
        Ok(c) => c,
        Err(e) => {
            log::error!("SIGHUP: {e}; keeping the running configuration");
            return;
        }
    };
    let r = ctx.reload(&new);
    if r.applied.is_empty() && r.need_restart.is_empty() {
        log::info!("SIGHUP: configuration re-read: unchanged");
        return;
    }
    for key in &r.need_restart {
        log::warn!("SIGHUP: {key} changed; restart cached to apply it");
    }
    if !r.applied.is_empty() {
        log::info!("SIGHUP: applied {}", r.applied.join(", "));
    }
    if !r.need_restart.is_empty() {
        log::info!(
            "SIGHUP: configuration re-read; running on with the old values of: {}",
            r.need_restart.join(", ")
        );
    }
}

fn supervised_receive(
    ctx: &Ctx,
    queue: &Doorbells,
    shutdown: &AtomicBool,
    tx: &crossbeam_channel::Sender<Doorbell>,
    name: &str,
) {
    supervised(
        name,
        || Counters::inc(&ctx.counters().threads_restarted),
        || receive_loop(ctx, queue, shutdown, tx),
    );
}

/// Takes doorbells off the queue until SIGTERM/SIGINT, then drains what is queued (bounded).
fn receive_loop(
    ctx: &Ctx,
    queue: &Doorbells,
    shutdown: &AtomicBool,
    tx: &crossbeam_channel::Sender<Doorbell>,
) {
    let mut buf = [0u8; MSG_SIZE];
    let mut stop_at: Option<Instant> = None;
    loop {
        if stop_at.is_none() && shutdown.load(Ordering::Relaxed) {
            stop_at = Some(Instant::now() + Duration::from_secs(2));
        }
        let wait = if stop_at.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        };
        match queue.recv(&mut buf, wait) {
            Ok(Some(n)) => match Doorbell::decode(&buf[..n]) {
                Ok(bell) => {
                    // Every worker busy: wait for one (the queue fills meanwhile, and the
                    // proxy's timed sends turn that into 503s).
                    while let Err(crossbeam_channel::SendTimeoutError::Timeout(_)) =
                        tx.send_timeout(bell, Duration::from_millis(200))
                    {
                        if shutdown.load(Ordering::Relaxed)
                            && stop_at.is_some_and(|t| Instant::now() >= t)
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    log::warn!("dropped a doorbell: {e}");
                    Counters::inc(&ctx.counters().messages_rejected);
                }
            },
            Ok(None) if stop_at.is_some() => return,
            Ok(None) => {}
            Err(e) => {
                log::error!("request queue: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            return;
        }
    }
}

fn handle(ctx: &Ctx, bell: Doorbell) {
    let Some(pool) = ctx.pool_for(&bell) else {
        Counters::inc(&ctx.counters().messages_rejected);
        return;
    };
    let mut lease = match pool.join(bell.index, bell.generation, bell.request_id) {
        Ok(l) => l,
        Err(e) => {
            log::debug!("dropped a doorbell for segment {}: {e}", bell.index);
            Counters::inc(&ctx.counters().messages_rejected);
            return;
        }
    };
    lease.set_timeout(ctx.cfg().read_timeout.max(Duration::from_secs(5)));
    let result = match bell.kind {
        Kind::Request => serve::serve(ctx, &mut lease),
        Kind::Purge => serve::purge(ctx, &mut lease),
    };
    match result {
        Ok(()) => lease.complete(),
        Err(e) => {
            Counters::inc(&ctx.counters().transfers_aborted);
            log::debug!("transfer in segment {} aborted: {e}", bell.index);
        }
    }
}

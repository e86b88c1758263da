//! Background refreshes of stale stored answers (stale-while-revalidate, RFC 5861 §3):
//! the request that finds the answer stale gets it at once, and one refresh per key runs
//! on a small pool of `cd-refresh` threads. A bounded queue: when it is full the request
//! revalidates in the foreground instead, so a burst of stale keys never piles up threads.

use crate::receiver::Ctx;
use crate::stored::Stored;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Refresh threads.
const THREADS: usize = 4;
/// Refreshes waiting for a thread, at most.
const QUEUE: usize = 256;

/// One refresh to run.
pub struct Refresh {
    /// Index of the site in the configuration.
    pub site: usize,
    /// The request that found the answer stale, without its own conditionals and range.
    pub req: common::protocol::RequestHead,
    /// Primary cache key (where the answer is stored) and full key (the variant).
    pub primary: String,
    pub key: String,
    pub obj: Arc<Stored>,
}

/// The queue and the keys whose refresh is queued or running.
pub struct Refreshes {
    tx: Sender<Refresh>,
    rx: Receiver<Refresh>,
    running: Mutex<HashSet<String>>,
}

impl Default for Refreshes {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        Refreshes {
            tx,
            rx,
            running: Mutex::new(HashSet::new()),
        }
    }
}

impl Refreshes {
    /// Queues `job` unless a refresh of its key is already queued or running (then the
    /// stale answer may be served all the same: one origin request however many clients).
    /// False when the queue is full.
    pub fn start(&self, job: Refresh) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains(&job.key) {
            return true;
        }
        let key = job.key.clone();
        match self.tx.try_send(job) {
            Ok(()) => {
                running.insert(key);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    fn done(&self, key: &str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Starts the refresh threads; they stop soon after `stop` is set.
pub fn start(ctx: &Arc<Ctx>, stop: &Arc<AtomicBool>) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..THREADS)
        .map(|i| {
            let (ctx, stop) = (Arc::clone(ctx), Arc::clone(stop));
            let name = format!("cd-refresh{i}");
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    common::supervise::supervised(
                        &name,
                        || common::stats::Counters::inc(&ctx.counters().threads_restarted),
                        || run(&ctx, &stop),
                    )
                })
        })
        .collect()
}

fn run(ctx: &Ctx, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(job) = ctx.refreshes.rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        // The key is released whatever happens, a panic included.
        struct Release<'a>(&'a Refreshes, &'a str);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.done(self.1);
            }
        }
        let _release = Release(&ctx.refreshes, &job.key);
        crate::source::origin::refresh(ctx, &job);
    }
}

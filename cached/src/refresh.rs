//! The queue of background refreshes of stale stored answers (stale-while-revalidate,
//! RFC 5861 §3): the request that finds an answer stale gets it at once (`phase` queues the
//! refresh), and one refresh per key runs on the `cd-refresh` threads the receiver starts
//! (`revalidate::in_background` carries it out). The queue is bounded: when it is full the
//! request revalidates in the foreground instead, so a burst of stale keys never piles up.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Threads that run refreshes.
pub const THREADS: usize = 4;
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

    /// The next refresh to run, waiting at most `wait`. Its key stays taken until the
    /// returned guard drops (whatever happens to the refresh, a panic included).
    pub fn next(&self, wait: Duration) -> Option<(Refresh, Taken<'_>)> {
        let job = self.rx.recv_timeout(wait).ok()?;
        let taken = Taken {
            queue: self,
            key: job.key.clone(),
        };
        Some((job, taken))
    }
}

/// A running refresh's hold on its key; dropping it lets the key be refreshed again.
pub struct Taken<'q> {
    queue: &'q Refreshes,
    key: String,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.queue
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

//! The worker's link to `cached`: who it is (pid + start time, from its stats region), its
//! doorbell queue and its stats region, found lazily and found again after it restarts.
//! Used by `fetch` (every exchange) and kept in the worker's `Ctx`.

use common::mq::Doorbells;
use common::process::ProcId;
use common::stats::StatsRegion;
use common::Names;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the liveness of `cached` is re-checked.
const RECHECK: Duration = Duration::from_millis(100);

/// The worker's view of `cached`: who it is (pid + start time, from its stats region), its
/// queue and its stats region (for the names of its sites), rediscovered lazily after it
/// restarts.
pub struct CachedLink {
    names: Names,
    state: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    peer: Option<Peer>,
    checked: Option<Instant>,
}

/// A live cached as a worker reaches it.
#[derive(Clone)]
pub struct Peer {
    pub id: ProcId,
    pub queue: Arc<Doorbells>,
    /// Its stats region: the site table an answer's `site` index points into.
    pub stats: Arc<StatsRegion>,
}

impl CachedLink {
    pub fn new(names: &Names) -> CachedLink {
        CachedLink {
            names: names.clone(),
            state: Mutex::new(Link::default()),
        }
    }

    /// The live cached, or `None` if it is not running.
    pub fn current(&self) -> Option<Peer> {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A live peer is trusted for RECHECK; an absent one is looked for on every request,
        // so a restarted cached is used at once.
        if link.peer.is_some() && link.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return link.peer.clone();
        }
        link.checked = Some(Instant::now());
        if link.peer.as_ref().is_some_and(|p| p.id.alive()) {
            return link.peer.clone();
        }
        link.peer = StatsRegion::open(&self.names.stats_cached)
            .ok()
            .filter(|r| r.owner().alive())
            .and_then(|stats| {
                Doorbells::open(&self.names.queue).ok().map(|q| Peer {
                    id: stats.owner(),
                    queue: Arc::new(q),
                    stats: Arc::new(stats),
                })
            });
        link.peer.clone()
    }

    /// Forgets the current peer (after a failed ring), so the next request looks again.
    pub fn forget(&self) {
        let mut link = self.state.lock().unwrap_or_else(|e| e.into_inner());
        link.peer = None;
        link.checked = None;
    }
}

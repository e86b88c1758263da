//! Files of the document root in the arena (disk mode): `cached` publishes a file it answers
//! whole (`200`) under the arena key a worker computes for the request that named it
//! (`common::hit::key` of its `Host` and target), with the file's identity (canonical path,
//! size, mtime, inode: `common::hit::FileId`); a worker serves it only while the file on disk
//! is still that one, and otherwise asks `cached`, which reads it again and republishes it.
//! Only requests whose target names the file plainly are published (`disk::publishable`): no
//! index file, percent-encoding, dot or empty segment, symlink; the directory redirects and
//! errors never are. The arena keys each file is under are remembered so that a PURGE of the
//! file removes them all ([`Published::remove`]). A child of `published`, kept apart from it.

use super::{lock, Published};
use crate::stored::{Stored, Validity};
use common::arena::Lookup;
use common::config::CachedConfig;
use common::hit::{self, FileId, Meta, Object};
use common::protocol::RequestHead;
use common::stats::Counters;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Arena keys one file may be published under (one per host and target naming it).
const KEYS_PER_FILE: usize = 8;
/// Files remembered at most; past that, new files are not published.
const MAX_FILES: usize = 1 << 16;

/// The arena keys of each published file, by its primary cache key (`file:PATH`). Locked
/// only while the arena's owner is (after it).
#[derive(Default)]
pub struct Files(Mutex<HashMap<String, Vec<String>>>);

impl Files {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Published {
    /// Publishes the file `obj` (stored under `primary`, read from the canonical `path`) for
    /// the request `req` that named it, unless something was removed since `ticket` or it is
    /// there already as it is; the caller checked that `req` names it plainly
    /// (`disk::publishable`). Larger than a record, or its file already under as many keys
    /// as it may be: not published (counted as refused).
    #[allow(clippy::too_many_arguments)]
    pub fn publish_file(
        &self,
        ticket: u64,
        cfg: &CachedConfig,
        primary: &str,
        path: &str,
        req: &RequestHead,
        obj: &Stored,
        counters: &Counters,
    ) {
        let Validity::File { len, mtime_ns, ino } = obj.validity else {
            return;
        };
        // Files keep their body here (never an arena reference).
        let (200, Some(bytes)) = (obj.status, obj.body.bytes()) else {
            return;
        };
        let host = String::from_utf8_lossy(req.header("host").unwrap_or_default());
        let key = hit::key(&host, &req.target);
        let mut headers = obj.headers.to_vec();
        if cfg.strip_targeted {
            common::cache_policy::strip_fields(&mut headers, &cfg.targeted_cache_control);
        }
        let meta = Meta::Object(Object {
            status: obj.status,
            headers,
            response_time: obj.response_time,
            initial_age: Duration::ZERO,
            lifetime: cfg.revalidate,
            must_revalidate: false,
            no_cache: false,
            show_ttl: false,
            site: String::new(),
            file: Some(FileId {
                path: path.to_string(),
                len,
                mtime_ns,
                ino,
            }),
        })
        .encode();
        if let Lookup::Hit(p) = self.reader.lookup(key.as_bytes()) {
            if p.meta() == meta {
                return;
            }
        }
        let mut guard = lock(&self.owner);
        if guard.1 != ticket {
            return;
        }
        {
            let mut files = self.files.lock();
            let known = files.len();
            let keys = files.entry(primary.to_string()).or_default();
            if !keys.contains(&key) {
                if keys.len() >= KEYS_PER_FILE || known >= MAX_FILES {
                    Counters::inc(&counters.arena_refused);
                    return;
                }
                keys.push(key.clone());
            }
        }
        let mut res = match guard.0.reserve(key.as_bytes(), &meta, bytes.len() as u64) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("file not published in the arena: {e}");
                guard.0.remove(key.as_bytes());
                Counters::inc(&counters.arena_refused);
                return;
            }
        };
        drop(guard);
        res.write(bytes);
        let mut guard = lock(&self.owner);
        if guard.1 != ticket {
            return;
        }
        if let Err(e) = guard.0.publish(res) {
            log::warn!("arena publish of a file failed: {e}");
            guard.0.remove(key.as_bytes());
        }
    }

    /// Removes every arena key the file `primary` was published under; `true` if any held
    /// something. The caller holds the owner's lock (`guard`).
    pub(super) fn remove_file(&self, owner: &mut common::arena::ArenaOwner, primary: &str) -> bool {
        let keys = self.files.lock().remove(primary).unwrap_or_default();
        keys.iter()
            .fold(false, |had, k| owner.remove(k.as_bytes()) | had)
    }
}

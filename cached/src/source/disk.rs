//! Files under the document root. A path never leaves the root: the target is decoded
//! segment by segment (refusing `..`, encoded `/`, NUL), then the canonical path must still
//! lie under the canonical root (refusing symlinks out of it). Files up to
//! `max_object_size` are kept in the LRU and checked against size, mtime and inode on each
//! hit; larger ones stream from disk.

use crate::receiver::Ctx;
use crate::respond::{self, Headers};
use crate::stored::{Stored, Validity};
use common::cache_policy as policy;
use common::http::{self, CacheOutcome, PathError};
use common::pool::Lease;
use common::protocol::{BodyLen, RequestHead};
use common::stats::Counters;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

enum Resolved {
    File(PathBuf, Metadata),
    /// A directory named without its trailing slash: redirect there.
    Redirect(String),
    Error(u16, &'static str),
}

fn resolve(ctx: &Ctx, target: &str) -> Resolved {
    let segments = match http::safe_path_segments(target) {
        Ok(s) => s,
        Err(PathError::BadEncoding) => return Resolved::Error(400, "bad percent-encoding in path"),
        Err(PathError::Forbidden) => return Resolved::Error(403, "path not allowed"),
    };
    let mut path = ctx.root.clone();
    path.extend(&segments);
    let Some((canon, meta)) = inside_root(ctx, path) else {
        return Resolved::Error(404, "no such file");
    };
    if meta.is_dir() {
        let path_part = target.split('?').next().unwrap_or("/");
        if !path_part.ends_with('/') {
            let query = target.find('?').map(|i| &target[i..]).unwrap_or("");
            // One leading slash only: `//evil.test` (or `/\evil.test`) would make a
            // protocol-relative Location, an open redirect to another host.
            let local = path_part.trim_start_matches(['/', '\\']);
            return Resolved::Redirect(format!("/{local}/{query}"));
        }
        return match inside_root(ctx, canon.join("index.html")) {
            Some((p, m)) if m.is_file() => Resolved::File(p, m),
            _ => Resolved::Error(404, "no index.html in this directory"),
        };
    }
    if !meta.is_file() {
        return Resolved::Error(404, "not a regular file");
    }
    Resolved::File(canon, meta)
}

/// The canonical path and its metadata, if it exists and lies under the root.
fn inside_root(ctx: &Ctx, path: PathBuf) -> Option<(PathBuf, Metadata)> {
    let canon = std::fs::canonicalize(path).ok()?;
    if !canon.starts_with(&ctx.root) {
        log::warn!("refused {}: outside the document root", canon.display());
        return None;
    }
    let meta = std::fs::metadata(&canon).ok()?;
    Some((canon, meta))
}

/// The LRU key of a target in disk mode (for PURGE).
pub fn cache_key(ctx: &Ctx, target: &str) -> Option<String> {
    match resolve(ctx, target) {
        Resolved::File(p, _) => Some(format!("file:{}", p.to_string_lossy())),
        _ => None,
    }
}

fn validity(meta: &Metadata) -> Validity {
    Validity::File {
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ino: meta.ino(),
    }
}

fn entity_headers(path: &std::path::Path, meta: &Metadata) -> Headers {
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let etag = format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let headers = vec![
        (
            "Content-Type".to_string(),
            http::content_type(&path.to_string_lossy())
                .as_bytes()
                .to_vec(),
        ),
        (
            "Last-Modified".to_string(),
            http::http_date(mtime).into_bytes(),
        ),
        ("ETag".to_string(), etag.into_bytes()),
    ];
    headers
}

pub fn serve(ctx: &Ctx, lease: &mut Lease, req: &RequestHead) -> io::Result<()> {
    respond::drain(lease)?;
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let body = b"405 Method Not Allowed: the document root serves GET and HEAD\n";
        let headers = vec![
            ("Allow".to_string(), b"GET, HEAD".to_vec()),
            (
                "Content-Type".to_string(),
                b"text/plain; charset=utf-8".to_vec(),
            ),
        ];
        return respond::full(lease, 405, CacheOutcome::Error, headers, body, false);
    }
    let (path, meta) = match resolve(ctx, &req.target) {
        Resolved::File(p, m) => (p, m),
        Resolved::Redirect(location) => {
            let headers = vec![
                ("Location".to_string(), location.into_bytes()),
                (
                    "Content-Type".to_string(),
                    b"text/plain; charset=utf-8".to_vec(),
                ),
            ];
            return respond::full(
                lease,
                301,
                CacheOutcome::Pass,
                headers,
                b"moved to the directory\n",
                head_only,
            );
        }
        Resolved::Error(status, msg) => return respond::error(lease, status, msg, head_only),
    };
    let headers = entity_headers(&path, &meta);
    let key = format!("file:{}", path.to_string_lossy());
    let valid = validity(&meta);
    let hit = ctx.cache.get(&key).filter(|o| o.validity == valid);
    if let Some(obj) = hit {
        Counters::inc(&ctx.counters().l2_hits);
        return super::serve_stored(ctx, lease, req, &obj, respond::Meta::of(CacheOutcome::Hit));
    }
    Counters::inc(&ctx.counters().l2_misses);
    Counters::inc(&ctx.counters().disk_reads);
    let len = meta.len();
    let mut file = File::open(&path)?;
    if len <= ctx.cfg.max_object_size && len <= ctx.cfg.capacity {
        let mut body = Vec::with_capacity(len as usize);
        (&mut file).take(len + 1).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            // The file changed under us: never serve or store a body that disagrees with
            // the length we announce.
            return respond::error(
                lease,
                503,
                "file changed while being read; retry",
                head_only,
            );
        }
        let obj = Arc::new(Stored {
            status: 200,
            headers,
            body: Arc::new(body),
            validity: valid,
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
        });
        super::serve_stored(ctx, lease, req, &obj, respond::Meta::of(CacheOutcome::Miss))?;
        super::store(ctx, &key, req, obj);
        return Ok(());
    }
    if policy::not_modified(&req.headers, &headers) {
        let keep = headers
            .into_iter()
            .filter(|(k, _)| k != "Content-Type")
            .collect();
        return respond::full(lease, 304, CacheOutcome::Pass, keep, b"", head_only);
    }
    // Too large to store: stream it through, checking we send exactly `len` bytes.
    if head_only {
        return respond::full_head_len(lease, CacheOutcome::Pass, headers, len);
    }
    respond::head(
        lease,
        200,
        BodyLen::Exact(len),
        respond::Meta::of(CacheOutcome::Pass),
        headers,
    )?;
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while sent < len {
        let want = buf.len().min((len - sent) as usize);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        lease.write_all(&buf[..n])?;
        sent += n as u64;
    }
    lease.finish()
}

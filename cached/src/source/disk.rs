//! Disk mode's source: files under the document root. A path never leaves the root: the
//! target is decoded segment by segment (refusing `..`, encoded `/`, NUL), then the
//! canonical path must still lie under the canonical root (refusing symlinks out of it).
//! It resolves a target to a file (or a directory's redirect), describes the file (its
//! validity, entity fields) and reads it, whole or streamed; `phase` decides whether a
//! stored copy serves instead, and `serve` carries that out.

use crate::ctx::Ctx;
use crate::error::SourceError;
use crate::stored::Validity;
use anyhow::Context as _;
use common::config::CachedConfig;
use common::http::Headers;
use common::http::{self, PathError};
use common::pool::Lease;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The canonical document root, or why it cannot be served.
pub fn document_root(cfg: &CachedConfig) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(&cfg.root)
        .with_context(|| format!("document root {}", cfg.root.display()))
}

/// What a target names under the root.
pub enum Resolved {
    File(PathBuf, Metadata),
    /// A directory named without its trailing slash: redirect there.
    Redirect(String),
}

/// The file (or the redirect) `target` names, or why there is none to serve.
pub fn resolve(ctx: &Ctx, target: &str) -> Result<Resolved, SourceError> {
    let segments = match http::safe_path_segments(target) {
        Ok(s) => s,
        Err(PathError::BadEncoding) => return Err(SourceError::BadPath),
        Err(PathError::Forbidden) => return Err(SourceError::Forbidden),
    };
    let mut path = ctx.root.clone();
    path.extend(&segments);
    let Some((canon, meta)) = inside_root(ctx, path) else {
        return Err(SourceError::NotFound("no such file"));
    };
    if meta.is_dir() {
        let path_part = target.split('?').next().unwrap_or("/");
        if !path_part.ends_with('/') {
            let query = target.find('?').map(|i| &target[i..]).unwrap_or("");
            // One leading slash only: `//evil.test` (or `/\\evil.test`) would make a
            // protocol-relative Location, an open redirect to another host.
            let local = path_part.trim_start_matches(['/', '\\']);
            return Ok(Resolved::Redirect(format!("/{local}/{query}")));
        }
        return match inside_root(ctx, canon.join("index.html")) {
            Some((p, m)) if m.is_file() => Ok(Resolved::File(p, m)),
            _ => Err(SourceError::NotFound("no index.html in this directory")),
        };
    }
    if !meta.is_file() {
        return Err(SourceError::NotFound("not a regular file"));
    }
    Ok(Resolved::File(canon, meta))
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

/// The cache key of a target in disk mode (for PURGE).
pub fn cache_key(ctx: &Ctx, target: &str) -> Option<String> {
    match resolve(ctx, target) {
        Ok(Resolved::File(p, _)) => Some(key_of(&p)),
        _ => None,
    }
}

/// The file's canonical `path` as the arena names it, if the request `target` that resolved
/// to it may be answered from the arena for that key (`published_file`): only a target that
/// names the file plainly — `/` and non-empty segments, none `.` or `..`, no percent-encoding
/// or fragment, not a directory's (its index file) — of a path with no symlink under the
/// root (the root joined with the segments is the canonical path). Anything else, however
/// cached answers it, stays cached's to answer.
pub fn publishable<'p>(ctx: &Ctx, target: &str, path: &'p Path) -> Option<&'p str> {
    let part = target.split('?').next().unwrap_or("");
    let plain = part.starts_with('/')
        && !part.ends_with('/')
        && !target.contains(['%', '#', '\\'])
        && part[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if !plain {
        return None;
    }
    let mut joined = ctx.root.clone();
    joined.extend(part[1..].split('/'));
    (joined == path).then(|| path.to_str()).flatten()
}

/// The cache key of a file.
pub fn key_of(path: &Path) -> String {
    format!("file:{}", path.to_string_lossy())
}

pub fn validity(meta: &Metadata) -> Validity {
    Validity::File {
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ino: meta.ino(),
    }
}

pub fn entity_headers(path: &Path, meta: &Metadata) -> Headers {
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

/// The whole file, `len` bytes as its metadata said; a file that changed while being read
/// is never served or stored with a body that disagrees with the length announced.
pub fn read(path: &Path, len: u64) -> Result<Vec<u8>, SourceError> {
    let mut body = Vec::with_capacity(len as usize);
    let read = File::open(path).and_then(|f| f.take(len + 1).read_to_end(&mut body));
    match read {
        Ok(_) if body.len() as u64 == len => Ok(body),
        Ok(_) => Err(SourceError::FileChanged),
        Err(e) => Err(opening(e)),
    }
}

/// Opens a resolved file for streaming.
pub fn open(path: &Path) -> Result<File, SourceError> {
    File::open(path).map_err(opening)
}

/// Copies exactly `len` bytes of `file` into the segment, after the head, then LAST; a
/// file that shrank aborts the transfer.
pub fn copy(lease: &mut Lease, file: &mut File, len: u64) -> io::Result<()> {
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

/// A file that resolved but cannot be opened now: gone since, or not ours to read.
fn opening(e: io::Error) -> SourceError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => SourceError::Forbidden,
        _ => SourceError::NotFound("no such file"),
    }
}

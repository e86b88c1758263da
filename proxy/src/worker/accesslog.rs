//! The access log, and the per-request counters that need the finished answer (method and
//! cache outcome). Called once per answered request by the `wN-execK` threads.
//!
//! Format: Combined Log Format plus four fields, the cache outcome (`X-Cache`), the origin's
//! status (`-` when the answer did not come from the origin, or is not known), the duration
//! in µs (request head received → answer sent) and the site that answered (its name in
//! cached's site table; `-` for none: disk mode, the proxy's own answers):
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] "GET /a.css HTTP/1.1" 200 1534 "-" "curl/8.5" HIT - 412 www.example.com
//! ```
//! The bytes field counts what was written to the client, head included (like nginx
//! `$bytes_sent`); `"` `\` and control or non-ASCII bytes in quoted fields are written `\xHH`,
//! and so is a space in the site name, which keeps the line's fields split by spaces.
//!
//! Every worker process appends to the same file, opened `O_APPEND`: lines are buffered per
//! process and written whole, many per `write(2)`, so lines of different workers never
//! interleave. A `wN-alog` thread writes the buffer out at least twice a second; after SIGTERM
//! every line is written at once. Rotation by size (`access_log_max_bytes`, keeping
//! `access_log_keep` generations `FILE.1` … `FILE.N`) is done by whichever worker first sees the
//! file too big, under an `flock` of the file; the others notice through the shared counters
//! (`access_log_rotations`, and `log_reopens`, which the master bumps on SIGUSR1) and reopen
//! the path. Lines that cannot be written are counted in `access_log_dropped`, never retried.
//!
//! Must never: block a request on anything but one buffered `write(2)`, or write a partial line.

use super::conn::Conn;
use super::Worker;
use common::request::Request;
use common::stats::{Counters, StatsRegion};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Buffered bytes that trigger a write from the request thread itself.
const FLUSH_BYTES: usize = 32 << 10;
/// Longest time a line waits in the buffer (the flusher wakes every `TICK`).
const MAX_DELAY: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(100);

static LOG: OnceLock<Option<AccessLog>> = OnceLock::new();

/// Records one answered request: counters by method and outcome, then the log line.
pub fn record(w: &Worker, conn: &Conn, req: &Request, took: Duration) {
    let c = w.counters();
    c.method(&req.method);
    c.outcome(conn.reply.outcome);
    let log = LOG.get_or_init(|| AccessLog::start(w));
    if let Some(log) = log {
        log.push(format_line(conn, req, took, SystemTime::now()).as_bytes());
    }
}

/// Writes out whatever is buffered, for a worker about to exit: `worker::run` should call it
/// after its threads are joined (until it does, lines of the last ≤ 0.5 s before a SIGTERM
/// may be lost when the worker exits before the flusher's next tick).
#[allow(dead_code)]
pub fn flush() {
    if let Some(Some(log)) = LOG.get() {
        log.flush();
    }
}

/// The log line for one request, newline included.
pub fn format_line(conn: &Conn, req: &Request, took: Duration, now: SystemTime) -> String {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    let mut line = String::with_capacity(160 + req.target.len());
    line.push_str(conn.peer());
    line.push_str(" - - [");
    line.push_str(&clf_time(now));
    line.push_str("] \"");
    escape_into(&mut line, req.method.as_bytes());
    line.push(' ');
    escape_into(&mut line, req.target.as_bytes());
    line.push_str(if req.version == 10 {
        " HTTP/1.0\" "
    } else {
        " HTTP/1.1\" "
    });
    let r = &conn.reply;
    if r.status == 0 {
        line.push('-');
    } else {
        line.push_str(&r.status.to_string());
    }
    line.push(' ');
    if r.bytes == 0 {
        line.push('-');
    } else {
        line.push_str(&r.bytes.to_string());
    }
    for name in ["referer", "user-agent"] {
        line.push_str(" \"");
        match header(name) {
            Some(v) if !v.is_empty() => escape_into(&mut line, v),
            _ => line.push('-'),
        }
        line.push('"');
    }
    line.push(' ');
    line.push_str(r.outcome.as_str());
    // The origin's status, when the origin took part in the answer.
    if r.upstream_status == 0 {
        line.push_str(" - ");
    } else {
        line.push(' ');
        line.push_str(&r.upstream_status.to_string());
        line.push(' ');
    }
    line.push_str(&took.as_micros().to_string());
    line.push(' ');
    site_into(&mut line, r.site.as_deref());
    line.push('\n');
    line
}

/// The site field: its name, with spaces escaped as well (`\x20`), or `-`.
fn site_into(out: &mut String, site: Option<&str>) {
    match site {
        Some(name) if !name.is_empty() => {
            for &b in name.as_bytes() {
                if b == b' ' {
                    out.push_str("\\x20");
                } else {
                    escape_into(out, &[b]);
                }
            }
        }
        _ => out.push('-'),
    }
}

/// Appends `bytes`, writing `"`, `\`, control and non-ASCII bytes as `\xHH` (as nginx does).
fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
}

/// `22/Nov/2026:08:01:42 +0000` (UTC).
pub fn clf_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = common::http::civil_from_days(days as i64);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        common::http::MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One worker process's handle on the shared access log file.
struct AccessLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// Our own mapping of the proxy's stats region (the worker's `Shared` is not `'static`).
    stats: StatsRegion,
    slot: usize,
    /// Set by SIGTERM/SIGINT: from then on every line is written at once.
    stopping: Arc<AtomicBool>,
    state: Mutex<State>,
}

struct State {
    file: Option<File>,
    /// Inode of `file`, to see whether the path was rotated under us.
    ino: u64,
    buf: Vec<u8>,
    lines: u64,
    /// When the oldest buffered line was added.
    oldest: Option<Instant>,
    /// Sum of `log_reopens + access_log_rotations` when `file` was opened.
    generation: u64,
    /// An open error was already logged (log once until it works again).
    complained: bool,
}

impl AccessLog {
    /// Opens the log of `w`'s config (if any) and starts the flusher thread.
    fn start(w: &Worker) -> Option<AccessLog> {
        let cfg = &w.shared.cfg;
        let path = cfg.access_log.clone()?;
        let stats = match StatsRegion::open(&w.shared.names.stats_proxy) {
            Ok(s) => s,
            Err(e) => {
                log::error!("access log disabled: cannot map the stats region: {e}");
                return None;
            }
        };
        let stopping = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let _ = signal_hook::flag::register(sig, stopping.clone());
        }
        let log = AccessLog {
            path,
            max_bytes: cfg.access_log_max_bytes,
            keep: cfg.access_log_keep,
            stats,
            slot: w.index,
            stopping,
            state: Mutex::new(State {
                file: None,
                ino: 0,
                buf: Vec::with_capacity(FLUSH_BYTES + 4096),
                lines: 0,
                oldest: None,
                generation: 0,
                complained: false,
            }),
        };
        {
            let mut st = log.lock();
            log.reopen(&mut st);
        }
        let name = format!("w{}-alog", w.index);
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // The log lives in a static for the rest of the process.
                common::supervise::supervised(
                    &name,
                    || {
                        if let Some(Some(log)) = LOG.get() {
                            Counters::inc(&log.counters().threads_restarted);
                        }
                    },
                    || loop {
                        std::thread::sleep(TICK);
                        if let Some(Some(log)) = LOG.get() {
                            log.tick();
                        }
                    },
                )
            });
        if let Err(e) = spawned {
            log::error!(
                "access log: cannot start its flusher thread ({e}); writing every line at once"
            );
            log.stopping.store(true, Ordering::Relaxed);
        }
        Some(log)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counters(&self) -> &Counters {
        self.stats.slot(self.slot)
    }

    /// Reopen requests and rotations by anyone, summed over every slot.
    fn generation(&self) -> u64 {
        (0..self.stats.slots())
            .map(|i| {
                let c = self.stats.slot(i);
                c.log_reopens
                    .load(Ordering::Relaxed)
                    .wrapping_add(c.access_log_rotations.load(Ordering::Relaxed))
            })
            .fold(0, u64::wrapping_add)
    }

    fn push(&self, line: &[u8]) {
        let mut st = self.lock();
        st.buf.extend_from_slice(line);
        st.lines += 1;
        st.oldest.get_or_insert_with(Instant::now);
        if st.buf.len() >= FLUSH_BYTES || self.stopping.load(Ordering::Relaxed) {
            self.write_out(&mut st);
        }
    }

    fn flush(&self) {
        let mut st = self.lock();
        self.write_out(&mut st);
    }

    /// The flusher's periodic work: write lines older than `MAX_DELAY`; follow reopens.
    fn tick(&self) {
        let mut st = self.lock();
        let due = st.oldest.is_some_and(|t| t.elapsed() >= MAX_DELAY)
            || (st.lines > 0 && self.stopping.load(Ordering::Relaxed));
        if due {
            self.write_out(&mut st);
        } else if st.generation != self.generation() {
            self.reopen(&mut st);
        }
    }

    /// (Re)opens the path, `O_APPEND | O_CREAT`, mode 0640.
    fn reopen(&self, st: &mut State) {
        st.generation = self.generation();
        match open_append(&self.path) {
            Ok(f) => {
                st.ino = f.metadata().map_or(0, |m| m.ino());
                st.file = Some(f);
                st.complained = false;
            }
            Err(e) => {
                if !st.complained {
                    log::error!("access log {}: {e}", self.path.display());
                    st.complained = true;
                }
                st.file = None;
            }
        }
    }

    /// Writes the buffer with one `write_all` (whole lines only), then rotates if needed.
    fn write_out(&self, st: &mut State) {
        if st.lines == 0 {
            return;
        }
        if st.file.is_none() || st.generation != self.generation() {
            self.reopen(st);
        }
        let lines = std::mem::take(&mut st.lines);
        st.oldest = None;
        let written = match st.file.as_mut() {
            Some(f) => f.write_all(&st.buf).is_ok(),
            None => false,
        };
        st.buf.clear();
        let c = self.counters();
        if written {
            Counters::add(&c.access_log_lines, lines);
        } else {
            Counters::add(&c.access_log_dropped, lines);
            return;
        }
        let size = st
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        if self.max_bytes > 0 && size >= self.max_bytes {
            self.rotate(st);
        }
    }

    /// Renames FILE.(N-1) → FILE.N … FILE → FILE.1 under an exclusive `flock` of FILE, unless
    /// another worker rotated first; then reopens.
    fn rotate(&self, st: &mut State) {
        let Ok(f) = open_append(&self.path) else {
            return;
        };
        let Ok(lock) = Flock::lock(f, FlockArg::LockExclusive) else {
            return;
        };
        let current = std::fs::metadata(&self.path).ok();
        let ours = current.as_ref().is_some_and(|m| m.ino() == st.ino);
        if ours && current.is_some_and(|m| m.len() >= self.max_bytes) {
            let keep = self.keep.max(1);
            for i in (1..keep).rev() {
                let _ = std::fs::rename(
                    generation_path(&self.path, i),
                    generation_path(&self.path, i + 1),
                );
            }
            match std::fs::rename(&self.path, generation_path(&self.path, 1)) {
                Ok(()) => Counters::inc(&self.counters().access_log_rotations),
                Err(e) => log::warn!("rotating {}: {e}", self.path.display()),
            }
        }
        drop(lock);
        self.reopen(st);
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// `FILE.n`.
fn generation_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_time_is_utc_and_padded() {
        let t = UNIX_EPOCH + Duration::from_secs(0);
        assert_eq!(clf_time(t), "01/Jan/1970:00:00:00 +0000");
        // 2000-02-29 13:05:09 UTC
        let t = UNIX_EPOCH + Duration::from_secs(951_829_509);
        assert_eq!(clf_time(t), "29/Feb/2000:13:05:09 +0000");
        // 2026-11-22 08:01:42 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_334_502);
        assert_eq!(clf_time(t), "22/Nov/2026:08:01:42 +0000");
    }

    #[test]
    fn site_field_is_one_token() {
        let site = |s: Option<&str>| {
            let mut out = String::new();
            site_into(&mut out, s);
            out
        };
        assert_eq!(site(Some("www.example.com")), "www.example.com");
        assert_eq!(site(None), "-");
        assert_eq!(site(Some("")), "-");
        assert_eq!(
            site(Some("my shop \"é\"")),
            "my\\x20shop\\x20\\x22\\xC3\\xA9\\x22"
        );
    }

    #[test]
    fn quoted_fields_are_escaped() {
        let mut s = String::new();
        escape_into(&mut s, b"a\"b\\c\n\x7f\xc3\xa9 d");
        assert_eq!(s, "a\\x22b\\x5Cc\\x0A\\x7F\\xC3\\xA9 d");
    }

    #[test]
    fn generations_are_numbered_suffixes() {
        assert_eq!(
            generation_path(Path::new("/var/log/a.log"), 3),
            PathBuf::from("/var/log/a.log.3")
        );
    }
}

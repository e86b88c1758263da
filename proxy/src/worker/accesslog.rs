//! The access log, and the per-request counters that need the finished answer (method and
//! cache outcome). Called once per answered request by the `wN-execK` threads.
//!
//! Format (`proxy.access_log_format`, see [`LogFormat`]): by default the Combined Log Format
//! exactly as nginx's `combined`, the bytes field counting the body only
//! (`$body_bytes_sent`, `0` for none):
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] "GET /a.css HTTP/1.1" 200 1534 "-" "curl/8.5"
//! ```
//! shmproxy's own fields (`$cache`, `$upstream_status`, `$request_time`, `$site`) are in the
//! `json` format and may be added to a field list. In text, every variable's value has `"`,
//! `\`, control and non-ASCII bytes written `\xHH` (as nginx's default escaping); `$site` has
//! its spaces escaped too, which keeps it one field. An absent value is `-`. `json` writes
//! one object per line, members named after the variables ([`LogVar::JSON`]), absent values
//! `null`, numbers as numbers, strings JSON-escaped (bytes that are not UTF-8 become U+FFFD).
//!
//! Every worker process appends to the same file, opened `O_APPEND`: lines are buffered per
//! process, in the order the answers completed, and written whole, many per `write(2)`, so
//! lines of different workers never interleave. The first line put into an empty buffer
//! wakes the `wN-alog` thread, which writes the buffer `BATCH` later (a line reaches the file
//! at most ~`BATCH` + one `write(2)` after its answer, well under 100 ms); a request thread
//! writes it itself when it holds `FLUSH_BYTES`, and after SIGTERM every line is written at
//! once. Writers take the `out` lock before the buffer, so buffers reach the file in order.
//! Rotation by size (`access_log_max_bytes`, off by default; `access_log_keep` generations
//! `FILE.1` … `FILE.N`) is done by whichever worker first sees the file too big, under an
//! `flock` of the file; the others notice through the shared counters
//! (`access_log_rotations`, and `log_reopens`, which the master bumps on SIGUSR1) and reopen
//! the path. Lines that cannot be written are counted in `access_log_dropped`, never retried.
//!
//! Must never: block a request on anything but one buffered `write(2)`, or write a partial line.

use crate::shared::Shared;
use common::config::{LogFormat, LogPart, LogVar};
use common::http::CacheOutcome;
use common::stats::{Counters, StatsRegion};
use nix::fcntl::{Flock, FlockArg};
use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Buffered bytes that trigger a write from the request thread itself.
const FLUSH_BYTES: usize = 32 << 10;
/// How long the first line of a batch waits for others before the flusher writes them.
const BATCH: Duration = Duration::from_millis(25);
/// How often an idle flusher looks for reopen requests and rotations.
const IDLE: Duration = Duration::from_millis(100);

static LOG: OnceLock<Option<AccessLog>> = OnceLock::new();

/// Records one answered request: counters by method and outcome, then the log line.
/// `shared` and `index` name the worker (its config, its stats slot); `entry` makes the line.
pub fn record<'a>(
    shared: &Shared,
    index: usize,
    method: &str,
    outcome: CacheOutcome,
    entry: impl FnOnce() -> Entry<'a>,
) {
    let c = shared.stats.slot(index);
    c.method(method);
    c.outcome(outcome);
    let log = LOG.get_or_init(|| AccessLog::start(shared, index));
    // Made only for a log that writes it: the client's address costs a `getpeername`.
    if let Some(log) = log {
        log.push(format_line(&log.format, &entry()).as_bytes());
    }
}

/// Writes out whatever is buffered, for a worker about to exit (`worker::run` calls it after
/// its threads are joined).
pub fn flush() {
    if let Some(Some(log)) = LOG.get() {
        log.write_out();
    }
}

/// What one line is made of: a plain record of the request and its answer.
pub struct Entry<'a> {
    pub peer: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    /// 10 or 11.
    pub version: u8,
    pub host: &'a str,
    /// 0: nothing was answered (logged as nginx's 499, "client closed request").
    pub status: u16,
    pub body_bytes: u64,
    pub bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub cache: &'a str,
    /// 0: the origin did not take part.
    pub upstream_status: u16,
    pub took: Duration,
    pub site: Option<&'a str>,
    pub node: &'a str,
    pub now: SystemTime,
}

/// A variable's value.
enum Val<'a> {
    Str(Cow<'a, [u8]>),
    /// A JSON number, written as is in text too.
    Num(String),
    Absent,
}

fn value<'a>(v: LogVar, e: &Entry<'a>) -> Val<'a> {
    let str_or_absent = |b: Option<&'a [u8]>| match b {
        Some(b) if !b.is_empty() => Val::Str(Cow::Borrowed(b)),
        _ => Val::Absent,
    };
    match v {
        LogVar::RemoteAddr => Val::Str(Cow::Borrowed(e.peer.as_bytes())),
        LogVar::RemoteUser => Val::Absent,
        LogVar::TimeLocal => Val::Str(Cow::Owned(clf_time(e.now).into_bytes())),
        LogVar::TimeIso8601 => Val::Str(Cow::Owned(iso_time(e.now).into_bytes())),
        LogVar::Request => {
            let proto = if e.version == 10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            Val::Str(Cow::Owned(
                format!("{} {} {proto}", e.method, e.target).into_bytes(),
            ))
        }
        LogVar::RequestMethod => Val::Str(Cow::Borrowed(e.method.as_bytes())),
        LogVar::RequestUri => Val::Str(Cow::Borrowed(e.target.as_bytes())),
        LogVar::Status => Val::Num(if e.status == 0 {
            "499".into()
        } else {
            e.status.to_string()
        }),
        LogVar::BodyBytesSent => Val::Num(e.body_bytes.to_string()),
        LogVar::BytesSent => Val::Num(e.bytes.to_string()),
        LogVar::HttpReferer => str_or_absent(e.referer),
        LogVar::HttpUserAgent => str_or_absent(e.user_agent),
        LogVar::Host => str_or_absent(Some(e.host.as_bytes())),
        LogVar::Cache => Val::Str(Cow::Borrowed(e.cache.as_bytes())),
        LogVar::UpstreamStatus if e.upstream_status == 0 => Val::Absent,
        LogVar::UpstreamStatus => Val::Num(e.upstream_status.to_string()),
        LogVar::RequestTime => {
            let us = e.took.as_micros();
            Val::Num(format!("{}.{:06}", us / 1_000_000, us % 1_000_000))
        }
        LogVar::Site => str_or_absent(e.site.map(str::as_bytes)),
        LogVar::Node => Val::Str(Cow::Borrowed(e.node.as_bytes())),
    }
}

/// The log line for one request, newline included.
pub fn format_line(format: &LogFormat, e: &Entry) -> String {
    let mut line = String::with_capacity(200 + e.target.len());
    match format {
        LogFormat::Fields(parts) => {
            for part in parts {
                match part {
                    LogPart::Text(t) => line.push_str(t),
                    LogPart::Var(v) => match value(*v, e) {
                        Val::Str(b) if *v == LogVar::Site => site_into(&mut line, &b),
                        Val::Str(b) => escape_into(&mut line, &b),
                        Val::Num(n) => line.push_str(&n),
                        Val::Absent => line.push('-'),
                    },
                }
            }
        }
        LogFormat::Json => {
            line.push('{');
            for (i, v) in LogVar::JSON.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push('"');
                line.push_str(v.name());
                line.push_str("\":");
                match value(*v, e) {
                    Val::Str(b) => json_string_into(&mut line, &b),
                    Val::Num(n) => line.push_str(&n),
                    Val::Absent => line.push_str("null"),
                }
            }
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// A JSON string: `"` `\\` and control characters escaped; bytes that are not UTF-8 become
/// U+FFFD.
fn json_string_into(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The site field: its name, with spaces escaped as well (`\x20`).
fn site_into(out: &mut String, name: &[u8]) {
    for &b in name {
        if b == b' ' {
            out.push_str("\\x20");
        } else {
            escape_into(out, &[b]);
        }
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

/// `2026-11-22T08:01:42+00:00` (UTC).
pub fn iso_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = common::http::civil_from_days(days as i64);
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
    format: LogFormat,
    max_bytes: u64,
    keep: u32,
    /// Our own mapping of the proxy's stats region (the worker's `Shared` is not `'static`).
    stats: StatsRegion,
    slot: usize,
    /// Set by SIGTERM/SIGINT: from then on every line is written at once.
    stopping: Arc<AtomicBool>,
    /// Lines not written yet. Taken after `out` by a writer, alone by `push`.
    pending: Mutex<Pending>,
    /// Signalled when a line goes into an empty buffer.
    wake: Condvar,
    out: Mutex<Out>,
}

struct Pending {
    buf: Vec<u8>,
    lines: u64,
    /// When the oldest buffered line was added.
    oldest: Option<Instant>,
}

struct Out {
    file: Option<File>,
    /// Inode of `file`, to see whether the path was rotated under us.
    ino: u64,
    /// The buffer being written (swapped with `Pending::buf`, keeping both allocations).
    writing: Vec<u8>,
    /// Sum of `log_reopens + access_log_rotations` when `file` was opened.
    generation: u64,
    /// An open error was already logged (log once until it works again).
    complained: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AccessLog {
    /// Opens the log of worker `index`'s config (if any) and starts the flusher thread.
    fn start(shared: &Shared, index: usize) -> Option<AccessLog> {
        let cfg = &shared.cfg;
        let path = cfg.access_log.clone()?;
        let stats = match StatsRegion::open(&shared.names.stats_proxy) {
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
            format: cfg.access_log_format.clone(),
            max_bytes: cfg.access_log_max_bytes,
            keep: cfg.access_log_keep,
            stats,
            slot: index,
            stopping,
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(FLUSH_BYTES + 4096),
                lines: 0,
                oldest: None,
            }),
            wake: Condvar::new(),
            out: Mutex::new(Out {
                file: None,
                ino: 0,
                writing: Vec::with_capacity(FLUSH_BYTES + 4096),
                generation: 0,
                complained: false,
            }),
        };
        log.reopen(&mut lock(&log.out));
        let name = format!("w{index}-alog");
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
                        match LOG.get() {
                            Some(Some(log)) => log.flusher_step(),
                            // `start` has not returned into the static yet.
                            _ => std::thread::sleep(BATCH),
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
        let mut p = lock(&self.pending);
        p.buf.extend_from_slice(line);
        p.lines += 1;
        let first = p.oldest.is_none();
        p.oldest.get_or_insert_with(Instant::now);
        let now = p.buf.len() >= FLUSH_BYTES || self.stopping.load(Ordering::Relaxed);
        drop(p);
        if now {
            self.write_out();
        } else if first {
            self.wake.notify_one();
        }
    }

    /// One round of the flusher: waits (at most `IDLE`) for a first line, lets the batch
    /// fill for what is left of `BATCH`, writes it; when idle, follows reopens.
    fn flusher_step(&self) {
        let mut p = lock(&self.pending);
        if p.oldest.is_none() {
            p = self
                .wake
                .wait_timeout(p, IDLE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let Some(oldest) = p.oldest else {
            drop(p);
            let mut out = lock(&self.out);
            if out.generation != self.generation() {
                self.reopen(&mut out);
            }
            return;
        };
        drop(p);
        let left = BATCH.saturating_sub(oldest.elapsed());
        if !left.is_zero() && !self.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(left);
        }
        self.write_out();
    }

    /// (Re)opens the path, `O_APPEND | O_CREAT`, mode 0640.
    fn reopen(&self, out: &mut Out) {
        out.generation = self.generation();
        match open_append(&self.path) {
            Ok(f) => {
                out.ino = f.metadata().map_or(0, |m| m.ino());
                out.file = Some(f);
                out.complained = false;
            }
            Err(e) => {
                if !out.complained {
                    log::error!("access log {}: {e}", self.path.display());
                    out.complained = true;
                }
                out.file = None;
            }
        }
    }

    /// Writes what is buffered with one `write_all` (whole lines only), then rotates if
    /// needed. Holds `out` throughout, so buffers reach the file in the order they filled.
    fn write_out(&self) {
        let mut out = lock(&self.out);
        let out = &mut *out;
        let lines = {
            let mut p = lock(&self.pending);
            if p.lines == 0 {
                return;
            }
            p.oldest = None;
            std::mem::swap(&mut p.buf, &mut out.writing);
            std::mem::take(&mut p.lines)
        };
        if out.file.is_none() || out.generation != self.generation() {
            self.reopen(out);
        }
        let written = match out.file.as_mut() {
            Some(f) => f.write_all(&out.writing).is_ok(),
            None => false,
        };
        out.writing.clear();
        let c = self.counters();
        if written {
            Counters::add(&c.access_log_lines, lines);
        } else {
            Counters::add(&c.access_log_dropped, lines);
            return;
        }
        if self.max_bytes == 0 {
            return;
        }
        let size = out
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        if size >= self.max_bytes {
            self.rotate(out);
        }
    }

    /// Renames FILE.(N-1) → FILE.N … FILE → FILE.1 under an exclusive `flock` of FILE, unless
    /// another worker rotated first; then reopens.
    fn rotate(&self, out: &mut Out) {
        let Ok(f) = open_append(&self.path) else {
            return;
        };
        let Ok(lock) = Flock::lock(f, FlockArg::LockExclusive) else {
            return;
        };
        let current = std::fs::metadata(&self.path).ok();
        let ours = current.as_ref().is_some_and(|m| m.ino() == out.ino);
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
        self.reopen(out);
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

    fn entry() -> Entry<'static> {
        Entry {
            peer: "127.0.0.1",
            method: "GET",
            target: "/a.css?x=\"1\"",
            version: 11,
            host: "www.example.com",
            status: 200,
            body_bytes: 18,
            bytes: 315,
            referer: None,
            user_agent: Some(b"curl/8.5 \"x\" \xc3\xa9\n"),
            cache: "HIT",
            upstream_status: 0,
            took: Duration::from_micros(1_000_412),
            site: Some("my shop"),
            node: "edge1",
            // 2026-11-22 08:01:42 UTC
            now: UNIX_EPOCH + Duration::from_secs(1_795_334_502),
        }
    }

    #[test]
    fn combined_is_nginx_combined_with_body_bytes() {
        let f = LogFormat::parse("combined").unwrap();
        assert_eq!(
            format_line(&f, &entry()),
            "127.0.0.1 - - [22/Nov/2026:08:01:42 +0000] \"GET /a.css?x=\\x221\\x22 HTTP/1.1\" 200 18 \"-\" \"curl/8.5 \\x22x\\x22 \\xC3\\xA9\\x0A\"\n"
        );
        let e = Entry {
            status: 0,
            body_bytes: 0,
            version: 10,
            ..entry()
        };
        assert!(format_line(&f, &e).contains(" HTTP/1.0\" 499 0 \"-\""));
    }

    #[test]
    fn field_lists_write_shmproxys_fields() {
        let f = LogFormat::parse(
            "$remote_addr $status $body_bytes_sent $bytes_sent $cache $upstream_status $request_time $site $host",
        )
        .unwrap();
        assert_eq!(
            format_line(&f, &entry()),
            "127.0.0.1 200 18 315 HIT - 1.000412 my\\x20shop www.example.com\n"
        );
        let e = Entry {
            upstream_status: 304,
            site: None,
            took: Duration::from_micros(412),
            ..entry()
        };
        assert_eq!(
            format_line(&f, &e),
            "127.0.0.1 200 18 315 HIT 304 0.000412 - www.example.com\n"
        );
        let f = LogFormat::parse("[$time_iso8601] $request_method $request_uri").unwrap();
        assert_eq!(
            format_line(&f, &entry()),
            "[2026-11-22T08:01:42+00:00] GET /a.css?x=\\x221\\x22\n"
        );
    }

    #[test]
    fn json_lines_are_one_escaped_object() {
        let line = format_line(&LogFormat::Json, &entry());
        assert!(line.ends_with("}\n") && !line[..line.len() - 1].contains('\n'));
        assert_eq!(
            line,
            concat!(
                r#"{"time_iso8601":"2026-11-22T08:01:42+00:00","remote_addr":"127.0.0.1","#,
                r#""remote_user":null,"request":"GET /a.css?x=\"1\" HTTP/1.1","#,
                r#""request_method":"GET","request_uri":"/a.css?x=\"1\"","status":200,"#,
                r#""body_bytes_sent":18,"bytes_sent":315,"http_referer":null,"#,
                r#""http_user_agent":"curl/8.5 \"x\" é\n","host":"www.example.com","#,
                r#""cache":"HIT","upstream_status":null,"request_time":1.000412,"#,
                r#""site":"my shop","node":"edge1"}"#,
                "\n"
            )
        );
        let mut s = String::new();
        json_string_into(&mut s, b"\\ \x01\x7f\xff\t");
        assert_eq!(s, "\"\\\\ \\u0001\\u007f\u{fffd}\\t\"");
    }

    #[test]
    fn iso_time_is_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(951_829_509);
        assert_eq!(iso_time(t), "2000-02-29T13:05:09+00:00");
    }

    #[test]
    fn site_field_is_one_token() {
        let site = |s: &str| {
            let mut out = String::new();
            site_into(&mut out, s.as_bytes());
            out
        };
        assert_eq!(site("www.example.com"), "www.example.com");
        assert_eq!(
            site("my shop \"é\""),
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

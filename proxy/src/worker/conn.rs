//! One client connection: reading and validating HTTP/1.1 request heads (keep-alive,
//! pipelining), request bodies (Content-Length or chunked), and writing answers with
//! bounded waits. The socket is non-blocking; every wait is a `poll` with a timeout.
//!
//! Client waits are budgeted per request, not only per wait (see [`Budget`]): a client that
//! trickles its body, or reads its answer a byte at a time, is closed once it falls below
//! `min_recv_rate` / `min_send_rate`, and only `client_wait_threads` threads of a worker may
//! wait on slow clients at once (see [`Conn::wait`]), so the others stay free for the rest.

use super::{accesslog, fetch, status, Worker};
use common::http::CacheOutcome;
use common::request::{parse_head, ClientBody, Parsed, Request};
use common::stats::Counters;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, MsgFlags};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// Send buffer for connections that get large answers (the kernel doubles it internally).
const BIG_SNDBUF: usize = 4 << 20;

pub struct Conn {
    pub stream: TcpStream,
    pub token: u64,
    /// Bytes read and not yet consumed (the start of the next request, pipelined ones).
    pub buf: Vec<u8>,
    pub last_active: Instant,
    /// Set while a request head is incomplete (header timeout).
    pub head_started: Option<Instant>,
    /// The client's address, looked up when first needed (access log, forwarded headers).
    peer: std::cell::OnceCell<String>,
    /// The descriptor is in the worker's epoll set (from its first park on).
    pub in_epoll: bool,
    /// The socket's send buffer was raised for large answers.
    big_sndbuf: bool,
    /// What the current request got, for the access log.
    pub reply: Reply,
    /// The current request's time budgets for waiting on the client: reading its body,
    /// writing its answer.
    pub recv_budget: Budget,
    pub send_budget: Budget,
    /// The current request has a body nobody has read yet: left on the socket it would be
    /// parsed as the next request (CL.0 smuggling), so it is discarded or the connection closed.
    pub body_unread: bool,
}

/// A wait on a client counts as slow (needs one of the worker's `client_wait_threads`
/// slots) once its request has waited this long on the client in all: a client that keeps
/// up never takes a slot, however busy the proxy is.
pub const SLOW_AFTER: Duration = Duration::from_millis(50);

/// Time budget of one direction of a request's client I/O (the whole body, not one wait):
/// the time spent waiting for the client may not exceed `min_rate_grace + bytes / min_rate`
/// (Apache mod_reqtimeout's MinRate; Varnish's send_timeout bounds a whole answer too).
/// For an answer, `bytes` counts what the client acknowledged, not what sits in the send
/// buffer, so a client that stops reading gets no credit for the buffer's megabytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Budget {
    /// Time spent in `poll` for this direction.
    pub waited: Duration,
    /// Bytes moved (read from, or written to, the socket).
    pub bytes: u64,
}

impl Budget {
    /// What is left of the budget with `credited` bytes at `rate` (`None`: no rate set).
    fn left(&self, credited: u64, grace: Duration, rate: u64) -> Option<Duration> {
        if rate == 0 {
            return None;
        }
        let earned = Duration::from_millis(credited.saturating_mul(1000) / rate);
        Some((grace + earned).saturating_sub(self.waited))
    }
}

/// Why a wait on a client was refused (the inner error of the `io::Error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWait {
    /// The request's budget is spent: the client is below the minimum rate.
    Slow,
    /// `client_wait_threads` threads already wait on slow clients.
    Crowded,
}

impl std::fmt::Display for ClientWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientWait::Slow => "client below the minimum rate",
            ClientWait::Crowded => "too many threads waiting on slow clients",
        })
    }
}

impl std::error::Error for ClientWait {}

impl ClientWait {
    /// The reason, if `e` is a refused client wait.
    pub fn of(e: &io::Error) -> Option<ClientWait> {
        e.get_ref()?.downcast_ref::<ClientWait>().copied()
    }

    fn error(self) -> io::Error {
        let kind = match self {
            ClientWait::Slow => io::ErrorKind::TimedOut,
            ClientWait::Crowded => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// Holds one of the worker's slots for waiting on a slow client (released on drop).
struct WaitSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaitSlot<'a> {
    fn take(w: &'a Worker) -> Option<WaitSlot<'a>> {
        use std::sync::atomic::Ordering;
        let cap = w.shared.cfg.client_wait_threads as usize;
        w.client_waits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitSlot(&w.client_waits))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Status, bytes and cache outcome of the answer to the current request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Bytes written to the client, head included.
    pub bytes: u64,
    /// Bytes of the answer's head (status line and fields), set where the head is made.
    pub head_bytes: u64,
    pub outcome: CacheOutcome,
    /// The origin's status when it took part (0: it did not).
    pub upstream_status: u16,
    /// The site cached answered for (`None`: no site, e.g. disk mode or the proxy's own).
    pub site: Option<std::sync::Arc<str>>,
}

impl Reply {
    fn new() -> Reply {
        Reply {
            status: 0,
            bytes: 0,
            head_bytes: 0,
            outcome: CacheOutcome::Error,
            upstream_status: 0,
            site: None,
        }
    }

    /// Body bytes written to the client (nginx's `$body_bytes_sent`; chunk framing counts).
    pub fn body_bytes(&self) -> u64 {
        self.bytes.saturating_sub(self.head_bytes)
    }
}

pub enum Next {
    Park,
    Close,
}

/// Per-thread buffers, reused across requests.
pub struct Scratch {
    pub io: Vec<u8>,
    /// Socket reads of request heads.
    pub read: Vec<u8>,
    /// Ready connections this thread took and has not served yet (see `give_back`).
    pub deferred: Vec<u64>,
}

impl Scratch {
    pub fn new(segment_size: usize) -> Scratch {
        Scratch {
            io: vec![0u8; segment_size.clamp(16 << 10, 256 << 10)],
            read: vec![0u8; 16 << 10],
            deferred: Vec::with_capacity(16),
        }
    }
}

impl Conn {
    pub fn new(stream: TcpStream, token: u64) -> Conn {
        Conn {
            stream,
            token,
            buf: Vec::new(),
            last_active: Instant::now(),
            head_started: None,
            peer: std::cell::OnceCell::new(),
            in_epoll: false,
            big_sndbuf: false,
            reply: Reply::new(),
            recv_budget: Budget::default(),
            send_budget: Budget::default(),
            body_unread: false,
        }
    }

    /// Starts the budgets of a new request.
    pub fn reset_budgets(&mut self) {
        self.recv_budget = Budget::default();
        self.send_budget = Budget::default();
    }

    /// The client's IP address ("-" if the socket cannot tell).
    pub fn peer(&self) -> &str {
        self.peer.get_or_init(|| {
            self.stream
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| "-".into())
        })
    }

    /// Records the answer's status and outcome (counted once per request).
    pub fn answered(&mut self, w: &Worker, status: u16, outcome: CacheOutcome) {
        self.reply.status = status;
        self.reply.outcome = outcome;
        w.counters().status(status);
    }

    /// Counts `n` body bytes sent to the client by other means than [`Conn::send`].
    pub fn account(&mut self, w: &Worker, n: usize) {
        self.reply.bytes += n as u64;
        self.send_budget.bytes += n as u64;
        Counters::add(&w.counters().bytes_out, n as u64);
    }

    /// Waits until the client's socket takes more bytes (bounded).
    pub fn wait_writable(&mut self, w: &Worker, timeout: Duration) -> io::Result<()> {
        self.wait(w, PollFlags::POLLOUT, timeout)
    }

    /// Writes `data` to the client, counting it.
    pub fn send(&mut self, w: &Worker, data: &[u8]) -> io::Result<()> {
        self.write_all_timeout(w, data, w.shared.cfg.send_timeout)?;
        self.reply.bytes += data.len() as u64;
        Counters::add(&w.counters().bytes_out, data.len() as u64);
        Ok(())
    }

    /// Waits for the client (`POLLIN`: body bytes, `POLLOUT`: room for answer bytes), at most
    /// `timeout` and at most what is left of the request's budget for that direction. A wait
    /// once the request has waited [`SLOW_AFTER`] in all needs one of the worker's
    /// `client_wait_threads` slots for as long as it polls; without one it is refused
    /// ([`ClientWait::Crowded`]). A spent budget is [`ClientWait::Slow`]; both are counted.
    /// `Ok` may be early: callers retry their read or write.
    fn wait(&mut self, w: &Worker, flags: PollFlags, timeout: Duration) -> io::Result<()> {
        super::before_blocking();
        let cfg = &w.shared.cfg;
        let sending = flags.contains(PollFlags::POLLOUT);
        let (budget, rate, credited) = if sending {
            // What the client took: written minus what still waits in the send buffer.
            let unsent = common::fdpass::unsent_bytes(self.stream.as_fd()).unwrap_or(0);
            let b = self.send_budget;
            (b, cfg.min_send_rate, b.bytes.saturating_sub(unsent))
        } else {
            let b = self.recv_budget;
            (b, cfg.min_recv_rate, b.bytes)
        };
        let left = budget.left(credited, cfg.min_rate_grace, rate);
        if left.is_some_and(|l| l.is_zero()) {
            Counters::inc(&w.counters().slow_client_closed);
            return Err(ClientWait::Slow.error());
        }
        let mut limit = left.map_or(timeout, |l| l.min(timeout));
        let waited = self.recv_budget.waited + self.send_budget.waited;
        let slot = if waited >= SLOW_AFTER {
            match WaitSlot::take(w) {
                Some(s) => Some(s),
                None => {
                    Counters::inc(&w.counters().slow_client_refused);
                    return Err(ClientWait::Crowded.error());
                }
            }
        } else {
            // Still a fast client: a short wait without a slot, then it needs one.
            limit = limit.min(SLOW_AFTER - waited);
            None
        };
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.stream.as_fd(), flags)];
        let t0 = Instant::now();
        let polled = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
        drop(slot);
        let took = t0.elapsed();
        if sending {
            self.send_budget.waited += took;
        } else {
            self.recv_budget.waited += took;
        }
        match polled {
            // The per-wait timeout, unless a shorter limit (budget, slot) ended the wait:
            // then the next wait decides.
            Ok(0) if limit == timeout => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow"))
            }
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes everything, waiting at most `timeout` for the client each time it stalls (and
    /// within the request's budget, see [`Conn::wait`]).
    pub fn write_all_timeout(
        &mut self,
        w: &Worker,
        mut data: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    self.send_budget.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(w, PollFlags::POLLOUT, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Before a large answer from memory: a send buffer that holds it whole saves the
    /// partial-write / wait cycles (measured: 1 MiB L1 hits 1.69 → 1.90 GB/s with wrk -c64).
    pub fn raise_send_buffer(&mut self) {
        if !self.big_sndbuf {
            self.big_sndbuf = true;
            let _ = nix::sys::socket::setsockopt(
                &self.stream,
                nix::sys::socket::sockopt::SndBuf,
                &BIG_SNDBUF,
            );
        }
    }

    /// Writes `head` then `body` with as few system calls as the socket allows (one
    /// `sendmsg` of both), counting them; bounded like [`Conn::write_all_timeout`]. `last`:
    /// the connection closes after this answer. Only if the socket is full
    /// does the thread first pass on its turn and the connections it took (`deferred`, see
    /// `give_back`) before it waits: an answer that fits the send buffer goes out without
    /// waking another thread (1 MiB L1 hits, wrk -c64, A/B against handing off before every
    /// answer over 64 KiB: 2.48-2.64 vs 1.95-2.25 GB/s, p99 37-41 vs 43-60 ms).
    pub fn send2(
        &mut self,
        w: &Worker,
        head: &[u8],
        body: &[u8],
        deferred: &mut Vec<u64>,
        last: bool,
    ) -> io::Result<()> {
        let timeout = w.shared.cfg.send_timeout;
        let total = head.len() + body.len();
        let mut done = 0;
        // The end of an answer followed by a close: the bytes wait for the FIN and leave with
        // it in one segment (one segment fewer per Connection: close request).
        let flags = if last {
            MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL
        } else {
            MsgFlags::MSG_NOSIGNAL
        };
        while done < total {
            let parts = [
                io::IoSlice::new(&head[done.min(head.len())..]),
                io::IoSlice::new(&body[done.saturating_sub(head.len())..]),
            ];
            let written = sendmsg::<()>(self.stream.as_raw_fd(), &parts, &[], flags, None)
                .map_err(io::Error::from);
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    self.send_budget.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    super::give_back(w, deferred);
                    self.wait(w, PollFlags::POLLOUT, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.reply.bytes += total as u64;
        Counters::add(&w.counters().bytes_out, total as u64);
        Ok(())
    }

    /// Reads some bytes (buffered ones first), waiting at most `timeout`. `Ok(0)` = EOF.
    /// Bytes taken from the socket (not from `buf`, counted when they were read) count as
    /// `bytes_in`.
    pub fn read_timeout(
        &mut self,
        w: &Worker,
        out: &mut [u8],
        timeout: Duration,
    ) -> io::Result<usize> {
        if !self.buf.is_empty() {
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        loop {
            match self.stream.read(out) {
                Ok(n) => {
                    Counters::add(&w.counters().bytes_in, n as u64);
                    self.recv_budget.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(w, PollFlags::POLLIN, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Serves every complete request buffered or readable now; parks when the socket has
/// nothing more, closes on EOF, error or `Connection: close`.
pub fn serve_ready(w: &Worker, conn: &mut Conn, scratch: &mut Scratch) -> Next {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&w.limits, &conn.buf) {
                Parsed::Complete(mut req, head_len) => {
                    if w.draining.load(std::sync::atomic::Ordering::Relaxed) {
                        req.keep_alive = false;
                    }
                    conn.buf.drain(..head_len);
                    conn.head_started = None;
                    conn.reset_budgets();
                    let started = Instant::now();
                    Counters::inc(&w.counters().requests);
                    conn.reply = Reply::new();
                    conn.body_unread = req.body != ClientBody::None;
                    // Every path either reads the body (forwarding, `discard_body`) or ends
                    // the connection: never is an unread body parsed as the next request.
                    let keep = handle(w, conn, &req, scratch) && !conn.body_unread;
                    let took = started.elapsed();
                    w.counters().latency(took.as_micros() as u64);
                    accesslog::record(w, conn, &req, took);
                    conn.last_active = Instant::now();
                    if !keep {
                        return Next::Close;
                    }
                    continue;
                }
                Parsed::Partial => {}
                Parsed::Error(status, msg) => {
                    w.counters().rejected(status, msg);
                    send_simple(w, conn, status, msg);
                    return Next::Close;
                }
            }
        }
        match conn.stream.read(&mut scratch.read) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                Counters::add(&w.counters().bytes_in, n as u64);
                if conn.head_started.is_none() {
                    conn.head_started = Some(Instant::now());
                }
                conn.buf.extend_from_slice(&scratch.read[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.buf.is_empty() {
                    conn.head_started = None;
                } else if conn.head_started.is_none() {
                    // The start of a pipelined head came with the last request: its
                    // header timeout runs from now, not from its next byte.
                    conn.head_started = Some(Instant::now());
                }
                return Next::Park;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

/// Answers one request; returns whether the connection may serve another.
fn handle(w: &Worker, conn: &mut Conn, req: &Request, scratch: &mut Scratch) -> bool {
    common::supervise::test_panic(&req.target, "proxy");
    if let ClientBody::Length(n) = req.body {
        if n > w.shared.cfg.max_body_bytes {
            w.counters().rejected(413, "request body too large");
            send_simple(w, conn, 413, "request body too large");
            return false;
        }
    }
    if super::tier::refuse_loop(w, conn, req) {
        return false;
    }
    if req.target.starts_with("/__shmproxy/") && req.method == "GET"
        || req.method == "HEAD" && req.target.starts_with("/__shmproxy/")
    {
        return discard_body(w, conn, req, scratch) && status::serve(w, conn, req);
    }
    if w.shared.cfg.l1_capacity > 0 && super::l1::eligible(&req.method, &req.headers) {
        if let Some(entry) = w.l1_lookup(&req.host, &req.target) {
            Counters::inc(&w.counters().l1_hits);
            return discard_body(w, conn, req, scratch)
                && serve_l1(w, conn, req, &entry, &mut scratch.deferred);
        }
        Counters::inc(&w.counters().l1_misses);
    }
    // Everything below may block (on cached or on the client): let other threads serve the
    // connections this one took events for.
    super::give_back(w, &mut scratch.deferred);
    let kind = if req.method == "PURGE" {
        if !status::allowed(w, conn) {
            // send_simple always closes: the body (unread) goes with the connection.
            send_simple(
                w,
                conn,
                403,
                "PURGE is allowed from the stats_allow addresses only",
            );
            return false;
        }
        common::protocol::Kind::Purge
    } else {
        common::protocol::Kind::Request
    };
    fetch::exchange(w, conn, req, kind, scratch)
}

/// Before an answer the proxy makes itself (L1 hit, its own endpoints): reads the request's
/// body and throws it away, so the connection can serve the next request. Bounded by
/// `max_body_bytes` and by `send_timeout` for the whole body; a body that fails either, or
/// is malformed, gets its status and the connection closes (`false`). A client that waits
/// for `100 Continue` gets it first (it would not send the body otherwise).
fn discard_body(w: &Worker, conn: &mut Conn, req: &Request, scratch: &mut Scratch) -> bool {
    if !conn.body_unread {
        return true;
    }
    let cfg = &w.shared.cfg;
    let buffered = matches!(req.body, ClientBody::Length(n) if conn.buf.len() as u64 >= n);
    if !buffered {
        // Reading it may block on the client: let other threads serve what this one took.
        super::give_back(w, &mut scratch.deferred);
    }
    if req.expect_continue
        && conn
            .write_all_timeout(w, b"HTTP/1.1 100 Continue\r\n\r\n", cfg.send_timeout)
            .is_err()
    {
        return false;
    }
    let deadline = Instant::now() + cfg.send_timeout;
    let mut buf = std::mem::take(&mut scratch.io);
    let read = read_body(w, conn, req.body, &mut buf, |_| {
        if Instant::now() > deadline {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body too slow",
            ))
        } else {
            Ok(())
        }
    });
    scratch.io = buf;
    match read {
        Ok(()) => {
            Counters::inc(&w.counters().request_bodies_discarded);
            true
        }
        Err(e) => {
            body_failure(w, conn, &e);
            false
        }
    }
}

/// Answers a request body that could not be read whole (nothing else was answered yet).
pub fn body_failure(w: &Worker, conn: &mut Conn, e: &io::Error) {
    if let Some(why) = ClientWait::of(e) {
        // Nothing answered yet: say why before the close.
        let (status, msg) = match why {
            ClientWait::Slow => (408, "request body not received in time"),
            ClientWait::Crowded => (503, "too many slow clients; retry shortly"),
        };
        send_simple(w, conn, status, msg);
        return;
    }
    match e.kind() {
        io::ErrorKind::FileTooLarge => {
            w.counters().rejected(413, "request body too large");
            send_simple(w, conn, 413, "request body too large");
        }
        io::ErrorKind::InvalidData => {
            w.counters().rejected(400, "malformed request body");
            send_simple(w, conn, 400, "malformed request body");
        }
        io::ErrorKind::TimedOut => Counters::inc(&w.counters().timeouts_send),
        _ => {}
    }
}

/// Answers from the worker's L1: no segment, no cached.
fn serve_l1(
    w: &Worker,
    conn: &mut Conn,
    req: &Request,
    e: &super::l1::Entry,
    deferred: &mut Vec<u64>,
) -> bool {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(e.fixed_headers.len() + 256);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        e.status,
        common::http::reason(e.status)
    );
    out.extend_from_slice(&e.fixed_headers);
    let _ = write!(
        out,
        "Age: {}\r\nContent-Length: {}\r\n{}",
        e.age(),
        e.body.len(),
        super::tier::fields(
            w,
            CacheOutcome::Hit,
            &req.method,
            0,
            Some(e.ttl_secs()),
            "; detail=l1",
            b""
        )
    );
    match (req.version, req.keep_alive) {
        (10, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (_, false) => out.extend_from_slice(b"Connection: close\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    conn.answered(w, e.status, CacheOutcome::Hit);
    conn.reply.head_bytes = out.len() as u64;
    conn.reply.site = e.site.clone();
    let body = if req.method == "HEAD" {
        &[][..]
    } else {
        &e.body[..]
    };
    if body.len() >= 256 << 10 {
        conn.raise_send_buffer();
    }
    conn.send2(w, &out, body, deferred, !req.keep_alive).is_ok() && req.keep_alive
}

/// Writes a complete small answer produced by the proxy itself (errors, 408, 503, ...).
pub fn send_simple(w: &Worker, conn: &mut Conn, status: u16, msg: &str) {
    let out = simple_answer(w, conn, status, msg);
    let _ = conn.send(w, &out);
}

/// The same without waiting: what the socket takes at once, for the control thread, which
/// must never wait on a client (a full socket would stall every timeout of the worker).
pub fn send_simple_nowait(w: &Worker, conn: &mut Conn, status: u16, msg: &str) {
    let out = simple_answer(w, conn, status, msg);
    if let Ok(n) = conn.stream.write(&out) {
        conn.reply.bytes += n as u64;
        Counters::add(&w.counters().bytes_out, n as u64);
    }
}

/// The bytes of a small answer (`Connection: close`), counted as answered.
fn simple_answer(w: &Worker, conn: &mut Conn, status: u16, msg: &str) -> Vec<u8> {
    let body = format!("{status} {}: {msg}\n", common::http::reason(status));
    let head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        common::http::reason(status),
        common::http::http_date(std::time::SystemTime::now()),
        body.len(),
        super::tier::fields(w, CacheOutcome::Error, "", 0, None, "", b"")
    );
    let head_len = head.len() as u64;
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    conn.answered(w, status, CacheOutcome::Error);
    conn.reply.head_bytes = head_len;
    out
}

/// Reads a request body from the client and hands its bytes to `sink`, de-chunking a
/// chunked body. Bounded by `max_body_bytes` and the send timeout per wait. Once it has
/// read the body whole, the connection may serve the next request (`body_unread` cleared).
pub fn read_body(
    w: &Worker,
    conn: &mut Conn,
    body: ClientBody,
    buf: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    match body {
        ClientBody::None => Ok(()),
        ClientBody::Length(n) => copy_exact(w, conn, n, buf, &mut sink),
        ClientBody::Chunked => read_chunked(w, conn, buf, &mut sink),
    }?;
    conn.body_unread = false;
    Ok(())
}

/// A chunked body by RFC 9112 §7.1: size lines and extensions by the ABNF, the trailer
/// section parsed as field lines (then dropped), so a request line after the last chunk is
/// an error, never eaten as a trailer.
fn read_chunked(
    w: &Worker,
    conn: &mut Conn,
    buf: &mut [u8],
    sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let timeout = w.shared.cfg.send_timeout;
    let mut total = 0u64;
    loop {
        let line = read_line(w, conn, timeout)?;
        let size = common::request::chunk_size_line(&line).ok_or_else(|| bad("chunk size line"))?;
        if size == 0 {
            let mut trailer_bytes = 0;
            loop {
                let line = read_line(w, conn, timeout)?;
                if line.is_empty() {
                    return Ok(());
                }
                trailer_bytes += line.len() + 2;
                if trailer_bytes > w.limits.max_header_bytes {
                    return Err(bad("trailer section too large"));
                }
                if !common::request::trailer_field_line(&line) {
                    return Err(bad("trailer line is not a field line"));
                }
            }
        }
        total = total.saturating_add(size);
        if total > w.shared.cfg.max_body_bytes {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "request body too large",
            ));
        }
        copy_exact(w, conn, size, buf, sink)?;
        if !read_line(w, conn, timeout)?.is_empty() {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

/// Passes exactly `n` body bytes from the client to `sink` (EOF before that is an error).
fn copy_exact(
    w: &Worker,
    conn: &mut Conn,
    mut n: u64,
    buf: &mut [u8],
    sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    while n > 0 {
        let want = buf.len().min(n as usize);
        let got = conn.read_timeout(w, &mut buf[..want], w.shared.cfg.send_timeout)?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        sink(&buf[..got])?;
        n -= got as u64;
    }
    Ok(())
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid chunked body: {what}"),
    )
}

/// Reads one CRLF-terminated line (without the CRLF), at most 4 KiB.
fn read_line(w: &Worker, conn: &mut Conn, timeout: Duration) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        if conn.buf.is_empty() {
            let mut tmp = [0u8; 16 << 10];
            let n = conn.read_timeout(w, &mut tmp, timeout)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            conn.buf.extend_from_slice(&tmp[..n]);
        }
        if let Some(i) = conn.buf.iter().position(|&b| b == b'\n') {
            line.extend(conn.buf.drain(..=i));
            line.pop();
            if line.pop() != Some(b'\r') {
                return Err(bad("bare LF"));
            }
            return Ok(line);
        }
        line.append(&mut conn.buf);
        if line.len() > 4096 {
            return Err(bad("line too long"));
        }
    }
}

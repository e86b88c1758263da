//! One client connection's I/O: reading request heads (keep-alive, pipelining) and request
//! bodies (Content-Length or chunked) off the socket, writing answer bytes, and the time
//! budgets of both directions. The socket is non-blocking; every wait is a `poll` with a
//! timeout. It knows nothing of routing, answers or the worker's scheduler: before a wait
//! it calls the [`Blocking`] hook it was given, and its failures are [`ClientError`]s that
//! the caller turns into answers.
//!
//! Client waits are budgeted per request, not only per wait (see [`Budget`]): a client that
//! trickles its body, or reads its answer a byte at a time, is closed once it falls below
//! `min_recv_rate` / `min_send_rate`, and only `client_wait_threads` threads of a worker may
//! wait on slow clients at once (see [`Conn::wait`]), so the others stay free for the rest.

use common::config::ProxyConfig;
use common::http::CacheOutcome;
use common::request::{parse_head, ClientBody, Limits, Parsed, RejectReason, Request};
use common::stats::Counters;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Send buffer for connections that get large answers (the kernel doubles it internally).
const BIG_SNDBUF: usize = 4 << 20;

/// What a thread does before it may block on a client: the worker's scheduler passes on
/// its turn and the connections it took, so others serve them meanwhile. Implemented by
/// the worker's pool; conn only calls it.
pub trait Blocking {
    fn will_block(&self);
}

/// What a connection's I/O needs of its worker, lent for one exec thread.
pub struct Io<'a> {
    pub cfg: &'a ProxyConfig,
    /// The worker's counters slot.
    pub counters: &'a Counters,
    /// Threads of the worker waiting on slow clients now (at most `client_wait_threads`).
    pub slow_waits: &'a AtomicUsize,
    pub blocking: &'a dyn Blocking,
}

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
    /// The last read took all the socket had (it returned less than it asked for): the
    /// next head waits for readiness instead of a read that would find nothing. Parking
    /// is always right (the epoll set is level-triggered: bytes that came since are
    /// reported at once); this only saves a keep-alive request's second `recv`.
    drained: bool,
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

/// Why I/O with the client failed.
#[derive(Debug)]
pub enum ClientError {
    /// The request's budget is spent: the client is below the minimum rate (counted in
    /// `slow_client_closed` where it is found).
    Slow,
    /// `client_wait_threads` threads already wait on slow clients (counted in
    /// `slow_client_refused` where it is found).
    Crowded,
    /// One wait ran its whole timeout (`send_timeout`), or a body its deadline.
    TimedOut,
    /// The client closed before the message ended, or its socket took nothing.
    Closed,
    /// The socket failed.
    Io(io::Error),
    /// The request body is over `max_body_bytes`.
    BodyTooLarge,
    /// The request body's chunked framing is invalid (what is wrong).
    BadChunk(&'static str),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Slow => f.write_str("client below the minimum rate"),
            ClientError::Crowded => f.write_str("too many threads waiting on slow clients"),
            ClientError::TimedOut => f.write_str("client too slow"),
            ClientError::Closed => f.write_str("client closed the connection"),
            ClientError::Io(e) => write!(f, "client socket: {e}"),
            ClientError::BodyTooLarge => f.write_str("request body too large"),
            ClientError::BadChunk(what) => write!(f, "invalid chunked body: {what}"),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }
}

/// A request body that could not be passed on: the client failed, or the sink did.
pub enum BodyError<E> {
    Client(ClientError),
    Sink(E),
}

impl<E> From<ClientError> for BodyError<E> {
    fn from(e: ClientError) -> BodyError<E> {
        BodyError::Client(e)
    }
}

/// Holds one of the worker's slots for waiting on a slow client (released on drop).
struct WaitSlot<'a>(&'a AtomicUsize);

impl<'a> WaitSlot<'a> {
    fn take(slots: &'a AtomicUsize, cap: usize) -> Option<WaitSlot<'a>> {
        // ORDERING: AcqRel/Acquire pair the slot count's updates between exec threads; the
        // count guards nothing else.
        slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitSlot(slots))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        // ORDERING: pairs with `take`'s update, as above.
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Status, bytes and cache outcome of the answer to the current request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// 0 until an answer's head is made (then nothing else may be answered).
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

/// What a ready connection does after its requests were served.
pub enum Next {
    Park,
    Close,
}

/// The next request head on a connection.
pub enum Head {
    Request(Request),
    /// The head is invalid: answer with this status and close.
    Invalid(RejectReason),
    /// Nothing complete yet and the socket has nothing more now.
    Park,
    /// The client closed, or the socket failed.
    Close,
}

/// Per-thread buffers, reused across requests.
pub struct Scratch {
    pub io: Vec<u8>,
    /// Socket reads of request heads.
    pub read: Vec<u8>,
}

impl Scratch {
    pub fn new(segment_size: usize) -> Scratch {
        Scratch {
            io: vec![0u8; segment_size.clamp(16 << 10, 256 << 10)],
            read: vec![0u8; 16 << 10],
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
            drained: false,
        }
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

    /// Reads until a whole request head is buffered, and takes it; starts the request's
    /// budgets and answer record. Never waits: with nothing more on the socket it parks.
    pub fn next_head(&mut self, counters: &Counters, limits: &Limits, read: &mut [u8]) -> Head {
        loop {
            if !self.buf.is_empty() {
                match parse_head(limits, &self.buf) {
                    Parsed::Complete(req, head_len) => {
                        self.buf.drain(..head_len);
                        self.head_started = None;
                        self.recv_budget = Budget::default();
                        self.send_budget = Budget::default();
                        self.reply = Reply::new();
                        self.body_unread = req.body != ClientBody::None;
                        return Head::Request(req);
                    }
                    Parsed::Partial => {}
                    Parsed::Error(why) => {
                        // Its answer is the only one: what the previous request got is done.
                        self.reply = Reply::new();
                        return Head::Invalid(why);
                    }
                }
            }
            let got = if std::mem::take(&mut self.drained) {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                self.stream.read(read)
            };
            match got {
                Ok(0) => return Head::Close,
                Ok(n) => {
                    self.drained = n < read.len();
                    Counters::add(&counters.bytes_in, n as u64);
                    if self.head_started.is_none() {
                        self.head_started = Some(Instant::now());
                    }
                    self.buf.extend_from_slice(&read[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        self.head_started = None;
                    } else if self.head_started.is_none() {
                        // The start of a pipelined head came with the last request: its
                        // header timeout runs from now, not from its next byte.
                        self.head_started = Some(Instant::now());
                    }
                    return Head::Park;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Head::Close,
            }
        }
    }

    /// Records the answer's status and outcome (counted once per request); its head is
    /// `head_bytes` long.
    pub fn answered(
        &mut self,
        counters: &Counters,
        status: u16,
        outcome: CacheOutcome,
        head_bytes: usize,
    ) {
        self.reply.status = status;
        self.reply.outcome = outcome;
        self.reply.head_bytes = head_bytes as u64;
        counters.status(status);
    }

    /// Counts `n` body bytes sent to the client by other means than [`Conn::send`].
    pub fn account(&mut self, counters: &Counters, n: usize) {
        self.reply.bytes += n as u64;
        self.send_budget.bytes += n as u64;
        Counters::add(&counters.bytes_out, n as u64);
    }

    /// Waits until the client's socket takes more bytes (bounded).
    pub fn wait_writable(&mut self, io: &Io) -> Result<(), ClientError> {
        self.wait(io, PollFlags::POLLOUT, io.cfg.send_timeout)
    }

    /// Writes `data` to the client, counting it.
    pub fn send(&mut self, io: &Io, data: &[u8]) -> Result<(), ClientError> {
        self.write_all_timeout(io, data, io.cfg.send_timeout)?;
        self.reply.bytes += data.len() as u64;
        Counters::add(&io.counters.bytes_out, data.len() as u64);
        Ok(())
    }

    /// Writes what the socket takes at once, counting it: for the control thread, which
    /// must never wait on a client (a full socket would stall every timeout of the worker).
    pub fn send_nowait(&mut self, counters: &Counters, data: &[u8]) {
        if let Ok(n) = self.stream.write(data) {
            self.reply.bytes += n as u64;
            Counters::add(&counters.bytes_out, n as u64);
        }
    }

    /// Waits for the client (`POLLIN`: body bytes, `POLLOUT`: room for answer bytes), at most
    /// `timeout` and at most what is left of the request's budget for that direction. A wait
    /// once the request has waited [`SLOW_AFTER`] in all needs one of the worker's
    /// `client_wait_threads` slots for as long as it polls; without one it is refused
    /// ([`ClientError::Crowded`]). A spent budget is [`ClientError::Slow`]; both are counted.
    /// `Ok` may be early: callers retry their read or write.
    fn wait(&mut self, io: &Io, flags: PollFlags, timeout: Duration) -> Result<(), ClientError> {
        io.blocking.will_block();
        let cfg = io.cfg;
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
            Counters::inc(&io.counters.slow_client_closed);
            return Err(ClientError::Slow);
        }
        let mut limit = left.map_or(timeout, |l| l.min(timeout));
        let waited = self.recv_budget.waited + self.send_budget.waited;
        let slot = if waited >= SLOW_AFTER {
            match WaitSlot::take(io.slow_waits, cfg.client_wait_threads as usize) {
                Some(s) => Some(s),
                None => {
                    Counters::inc(&io.counters.slow_client_refused);
                    return Err(ClientError::Crowded);
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
            Ok(0) if limit == timeout => Err(ClientError::TimedOut),
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => Err(ClientError::Io(e.into())),
        }
    }

    /// Writes everything, waiting at most `timeout` for the client each time it stalls (and
    /// within the request's budget, see [`Conn::wait`]).
    pub fn write_all_timeout(
        &mut self,
        io: &Io,
        mut data: &[u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    data = &data[n..];
                    self.send_budget.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(io, PollFlags::POLLOUT, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Before a large answer from memory: a send buffer that holds it whole saves the
    /// partial-write / wait cycles.
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

    /// Reads some bytes (buffered ones first), waiting at most `timeout`. `Ok(0)` = EOF.
    /// Bytes taken from the socket (not from `buf`, counted when they were read) count as
    /// `bytes_in`.
    pub fn read_timeout(
        &mut self,
        io: &Io,
        out: &mut [u8],
        timeout: Duration,
    ) -> Result<usize, ClientError> {
        if !self.buf.is_empty() {
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        loop {
            match self.stream.read(out) {
                Ok(n) => {
                    Counters::add(&io.counters.bytes_in, n as u64);
                    self.recv_budget.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(io, PollFlags::POLLIN, timeout)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the request's body from the client and hands its bytes to `sink`, de-chunking
    /// a chunked body. Bounded by `max_body_bytes` and the send timeout per wait. Once it
    /// has read the body whole, the connection may serve the next request (`body_unread`
    /// cleared).
    pub fn read_body<E>(
        &mut self,
        io: &Io,
        body: ClientBody,
        buf: &mut [u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), BodyError<E>> {
        match body {
            ClientBody::None => Ok(()),
            ClientBody::Length(n) => self.copy_exact(io, n, buf, &mut sink),
            ClientBody::Chunked => self.read_chunked(io, buf, &mut sink),
        }?;
        self.body_unread = false;
        Ok(())
    }

    /// A chunked body by RFC 9112 §7.1: size lines and extensions by the ABNF, the trailer
    /// section parsed as field lines (then dropped), so a request line after the last chunk
    /// is an error, never eaten as a trailer.
    fn read_chunked<E>(
        &mut self,
        io: &Io,
        buf: &mut [u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), BodyError<E>> {
        let mut total = 0u64;
        loop {
            let line = self.read_line(io)?;
            // Not `httparse::parse_chunk_size`: it takes any octet in an extension (NUL,
            // an unterminated quoted string), which RFC 9112's ABNF and our tests reject.
            let size = common::request::chunk_size_line(&line)
                .ok_or(ClientError::BadChunk("chunk size line"))?;
            if size == 0 {
                let mut trailer_bytes = 0;
                loop {
                    let line = self.read_line(io)?;
                    if line.is_empty() {
                        return Ok(());
                    }
                    trailer_bytes += line.len() + 2;
                    if trailer_bytes > io.cfg.max_header_bytes {
                        return Err(ClientError::BadChunk("trailer section too large").into());
                    }
                    if !common::request::trailer_field_line(&line) {
                        return Err(
                            ClientError::BadChunk("trailer line is not a field line").into()
                        );
                    }
                }
            }
            total = total.saturating_add(size);
            if total > io.cfg.max_body_bytes {
                return Err(ClientError::BodyTooLarge.into());
            }
            self.copy_exact(io, size, buf, sink)?;
            if !self.read_line(io)?.is_empty() {
                return Err(ClientError::BadChunk("chunk not followed by CRLF").into());
            }
        }
    }

    /// Passes exactly `n` body bytes from the client to `sink` (EOF before that is an error).
    fn copy_exact<E>(
        &mut self,
        io: &Io,
        mut n: u64,
        buf: &mut [u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), BodyError<E>> {
        while n > 0 {
            let want = buf.len().min(n as usize);
            let got = self.read_timeout(io, &mut buf[..want], io.cfg.send_timeout)?;
            if got == 0 {
                return Err(ClientError::Closed.into());
            }
            sink(&buf[..got]).map_err(BodyError::Sink)?;
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads one CRLF-terminated line (without the CRLF), at most 4 KiB.
    fn read_line(&mut self, io: &Io) -> Result<Vec<u8>, ClientError> {
        let mut line = Vec::new();
        loop {
            if self.buf.is_empty() {
                let mut tmp = [0u8; 16 << 10];
                let n = self.read_timeout(io, &mut tmp, io.cfg.send_timeout)?;
                if n == 0 {
                    return Err(ClientError::Closed);
                }
                self.buf.extend_from_slice(&tmp[..n]);
            }
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                line.extend(self.buf.drain(..=i));
                line.pop();
                if line.pop() != Some(b'\r') {
                    return Err(ClientError::BadChunk("bare LF"));
                }
                return Ok(line);
            }
            line.append(&mut self.buf);
            if line.len() > 4096 {
                return Err(ClientError::BadChunk("line too long"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::stats::StatsRegion;
    use std::io::Write;
    use std::net::TcpListener;

    const LIMITS: Limits = Limits {
        max_header_bytes: 16 << 10,
        max_headers: 100,
    };

    /// A connected pair: the client's end and the server's, non-blocking, as a worker has it.
    fn pair() -> (TcpStream, Conn) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, Conn::new(server, 1))
    }

    /// Waits (bounded) until `conn`'s socket has bytes to read.
    fn readable(conn: &Conn) {
        let mut fds = [PollFd::new(conn.stream.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).unwrap(), 1);
    }

    #[test]
    fn a_connection_whose_last_read_drained_the_socket_parks_without_reading_again() {
        // The region is unlinked when it is dropped (its creator owns the name).
        let stats =
            StatsRegion::create(&format!("/t{}-drained.stats", std::process::id()), 1).unwrap();
        let counters = stats.slot(0);
        let mut read = vec![0u8; 16 << 10];
        let (mut client, mut conn) = pair();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        readable(&conn);
        let Head::Request(a) = conn.next_head(counters, &LIMITS, &mut read) else {
            panic!("no first request");
        };
        assert_eq!(a.target, "/a");
        // The read took all there was: the next head parks at once, even with bytes that
        // came since (the epoll set reports those when the connection is parked).
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        readable(&conn);
        assert!(matches!(
            conn.next_head(counters, &LIMITS, &mut read),
            Head::Park
        ));
        // Woken again, it reads them.
        let Head::Request(b) = conn.next_head(counters, &LIMITS, &mut read) else {
            panic!("the second request was lost");
        };
        assert_eq!(b.target, "/b");
        // Pipelined requests that came in one read are all served before it parks.
        client
            .write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(matches!(
            conn.next_head(counters, &LIMITS, &mut read),
            Head::Park
        ));
        readable(&conn);
        for want in ["/c", "/d"] {
            let Head::Request(r) = conn.next_head(counters, &LIMITS, &mut read) else {
                panic!("pipelined request {want} lost");
            };
            assert_eq!(r.target, want);
        }
        assert!(matches!(
            conn.next_head(counters, &LIMITS, &mut read),
            Head::Park
        ));
    }
}

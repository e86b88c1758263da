//! A scriptable HTTP/1.1 origin server that runs inside the test process.
//!
//! Tests register a response per path ([`Route`]: status, headers, body, optional delay before
//! the head, optional trickle of the body, Content-Length / chunked / close framing), point
//! `cached --origin` at [`Origin::url`], and afterwards inspect what reached the origin: every
//! request is recorded (method, target, headers, de-framed body) and counted per path.
//!
//! `/echo` (and anything under `/echo/`) answers any method with a JSON description of the
//! request it received: `{"method", "target", "version", "headers": [[name, value]...],
//! "body_len", "body_hex"}`.
//!
//! One thread per connection, keep-alive supported; request bodies framed by `Content-Length` or
//! `chunked` are read. Threads end when their connection closes or idles for 30 s.
//!
//! [`Origin::builder`] adds: TLS ([`OriginBuilder::tls`], a certificate from [`crate::tls`];
//! rustls, ring provider), closing a connection that has been idle for exactly some time after
//! its last answer ([`OriginBuilder::idle_close`], optionally treating a request that comes just
//! before that deadline as still in flight: [`OriginBuilder::in_flight`]) and advertising it or
//! any other
//! `Keep-Alive: timeout=` ([`OriginBuilder::advertise_keep_alive`]). [`Origin::accepted`]
//! counts TCP connections, to check reuse. A plain origin that receives a TLS ClientHello
//! answers `400` and closes, as nginx or Node do on a plain port.

// A shared harness: not every test file uses every helper.
#![allow(dead_code)]

use shmproxy_tests::client;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How the origin frames a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    ContentLength,
    Chunked,
    /// No length: the body ends when the origin closes the connection.
    Close,
}

/// A scripted response.
#[derive(Debug, Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Wait this long after reading the request, before sending anything.
    pub delay: Option<Duration>,
    /// Send the body in pieces of `.0` bytes with `.1` between them.
    pub trickle: Option<(usize, Duration)>,
}

impl Route {
    /// `200` with `body`, framed by `Content-Length`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Route {
        Route {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            framing: Framing::ContentLength,
            delay: None,
            trickle: None,
        }
    }

    pub fn status(mut self, status: u16) -> Route {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn framing(mut self, f: Framing) -> Route {
        self.framing = f;
        self
    }

    pub fn delay(mut self, d: Duration) -> Route {
        self.delay = Some(d);
        self
    }

    pub fn trickle(mut self, piece: usize, pause: Duration) -> Route {
        self.trickle = Some((piece.max(1), pause));
        self
    }
}

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The body after removing its framing.
    pub body: Vec<u8>,
    /// How the body was framed on the wire: `Some("chunked")`, `Some("length")` or `None`.
    pub body_framing: Option<&'static str>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        client::header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        client::header_all(&self.headers, name)
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    requests: Mutex<Vec<Recorded>>,
    counts: Mutex<HashMap<String, usize>>,
    /// TCP connections accepted.
    accepted: AtomicUsize,
    stop: AtomicBool,
    opts: Options,
}

/// Connection behaviour chosen with [`OriginBuilder`].
#[derive(Default, Clone)]
struct Options {
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Close a connection this long after its last answer when no new request has begun.
    idle_close: Option<Duration>,
    /// A request whose first byte comes less than this before the idle deadline is taken as
    /// still on the wire: the connection closes at the deadline anyway.
    in_flight: Duration,
    /// Send `Connection: keep-alive` and `Keep-Alive: timeout=N` with every kept-alive answer.
    advertise_keep_alive: Option<u64>,
}

/// How an [`Origin`] is started: plain or TLS, and its keep-alive behaviour.
#[derive(Default, Clone)]
pub struct OriginBuilder {
    opts: Options,
    url_host: Option<String>,
    /// Listen on this address instead of 127.0.0.1.
    bind_ip: Option<std::net::IpAddr>,
}

impl OriginBuilder {
    /// Serve TLS with `cert` (its key and a rustls server configuration). The URL's host
    /// becomes `localhost` unless [`OriginBuilder::url_host`] says otherwise.
    pub fn tls(mut self, cert: &crate::tls::TestCert) -> OriginBuilder {
        self.opts.tls = Some(cert.server_config());
        self
    }

    /// The host [`Origin::url`] names (the listener is always on 127.0.0.1).
    pub fn url_host(mut self, host: &str) -> OriginBuilder {
        self.url_host = Some(host.to_string());
        self
    }

    /// Listen on `ip` (e.g. an address of a network namespace the calling thread entered);
    /// the URL names it too.
    pub fn bind_ip(mut self, ip: std::net::IpAddr) -> OriginBuilder {
        self.bind_ip = Some(ip);
        self
    }

    /// Close a connection `after` its last answer was sent if no new request has started by
    /// then (the first byte of the next request must arrive within `after`).
    pub fn idle_close(mut self, after: Duration) -> OriginBuilder {
        self.opts.idle_close = Some(after);
        self
    }

    /// With [`OriginBuilder::idle_close`]: behave as if requests took `lag` to arrive. A
    /// request whose first byte comes within `lag` before the idle deadline is not read; the
    /// connection closes at the deadline (the kernel resets it, unread data pending), as a
    /// server does whose keep-alive timer fires while the request is in flight. On loopback
    /// that race is otherwise a few microseconds wide.
    pub fn in_flight(mut self, lag: Duration) -> OriginBuilder {
        self.opts.in_flight = lag;
        self
    }

    /// Advertise `Keep-Alive: timeout=SECS` (with `Connection: keep-alive`) on every answer
    /// that keeps the connection open.
    pub fn advertise_keep_alive(mut self, secs: u64) -> OriginBuilder {
        self.opts.advertise_keep_alive = Some(secs);
        self
    }

    /// Binds 127.0.0.1 on a free port and starts accepting.
    pub fn start(self) -> Origin {
        let ip = self.bind_ip.unwrap_or([127, 0, 0, 1].into());
        let listener = TcpListener::bind((ip, 0)).expect("origin: bind");
        let addr = listener.local_addr().unwrap();
        let tls = self.opts.tls.is_some();
        let state = Arc::new(State {
            opts: self.opts,
            ..State::default()
        });
        let st = state.clone();
        thread::Builder::new()
            .name("origin-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    st.accepted.fetch_add(1, Ordering::SeqCst);
                    let st = st.clone();
                    let _ = thread::Builder::new()
                        .name("origin-conn".into())
                        .spawn(move || {
                            let _ = serve_conn(conn, &st);
                        });
                }
            })
            .expect("origin: spawn");
        let host = self.url_host.unwrap_or_else(|| {
            if tls {
                "localhost".into()
            } else {
                ip.to_string()
            }
        });
        let scheme = if tls { "https" } else { "http" };
        Origin {
            addr,
            url: format!("{scheme}://{host}:{}", addr.port()),
            state,
        }
    }
}

/// The running origin. Dropping it stops accepting (open connections finish on their own).
pub struct Origin {
    addr: SocketAddr,
    url: String,
    state: Arc<State>,
}

impl Origin {
    /// A plain HTTP origin on 127.0.0.1, a free port.
    pub fn start() -> Origin {
        Origin::builder().start()
    }

    /// A TLS origin presenting `cert`, at `https://localhost:PORT`.
    pub fn start_tls(cert: &crate::tls::TestCert) -> Origin {
        Origin::builder().tls(cert).start()
    }

    pub fn builder() -> OriginBuilder {
        OriginBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT` for TLS), for `cached --origin`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// TCP connections accepted so far (handshakes that failed included).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Registers (or replaces) the response for `path` (exact target, or the path before `?`).
    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests whose path (before `?`) is `path`.
    pub fn requests_for(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }

    /// How many requests arrived for `path` (before `?`).
    pub fn count(&self, path: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Read timeout while a request is under way, and idle limit without `idle_close`.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn serve_conn(conn: TcpStream, st: &State) -> io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_nodelay(true)?;
    let tcp = conn.try_clone()?;
    match &st.opts.tls {
        Some(cfg) => {
            let tls = rustls::ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(tls, conn);
            // Handshake first, so a client that refuses the certificate never counts as a
            // request.
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock)?;
            }
            serve(BufReader::new(stream), &tcp, st)
        }
        None => {
            let mut reader = BufReader::new(conn);
            if reader.fill_buf()?.first() == Some(&0x16) {
                // A TLS handshake record on a plain port.
                let w = reader.get_mut();
                w.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return Ok(());
            }
            serve(reader, &tcp, st)
        }
    }
}

/// Waits at most `limit` for the first byte of the next request; false if none came (or the
/// peer closed).
fn next_request_within<S: Read>(
    reader: &mut BufReader<S>,
    tcp: &TcpStream,
    limit: Duration,
) -> io::Result<bool> {
    if !reader.buffer().is_empty() {
        return Ok(true);
    }
    tcp.set_read_timeout(Some(limit))?;
    let got = match reader.fill_buf() {
        Ok(b) => Ok(!b.is_empty()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    };
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    got
}

fn serve<S: Read + Write>(mut reader: BufReader<S>, tcp: &TcpStream, st: &State) -> io::Result<()> {
    let mut first = true;
    loop {
        if let Some(limit) = st.opts.idle_close.filter(|_| !first) {
            let idle_since = Instant::now();
            let wait = limit.saturating_sub(st.opts.in_flight);
            if wait.is_zero() || !next_request_within(&mut reader, tcp, wait)? {
                thread::sleep((idle_since + limit).saturating_duration_since(Instant::now()));
                return Ok(());
            }
        }
        first = false;
        let Some(req) = read_request(&mut reader)? else {
            return Ok(());
        };
        if st.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let path = req.path().to_string();
        *st.counts.lock().unwrap().entry(path.clone()).or_default() += 1;
        st.requests.lock().unwrap().push(req.clone());
        let client_close = req
            .header_all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
            || req.version == "HTTP/1.0";
        let route = if path == "/echo" || path.starts_with("/echo/") {
            echo(&req)
        } else {
            let routes = st.routes.lock().unwrap();
            routes
                .get(&req.target)
                .or_else(|| routes.get(&path))
                .cloned()
                .unwrap_or_else(|| Route::ok(format!("origin: no route for {path}\n")).status(404))
        };
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        let close = write_response(
            reader.get_mut(),
            &route,
            head_only,
            client_close,
            st.opts.advertise_keep_alive,
        )?;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request; `Ok(None)` on a clean close before any byte.
fn read_request<S: Read>(r: &mut BufReader<S>) -> io::Result<Option<Recorded>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':').unwrap_or((h, ""));
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let mut req = Recorded {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        body_framing: None,
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body_framing = Some("chunked");
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = match httparse::parse_chunk_size(size.as_bytes()) {
                Ok(httparse::Status::Complete((_, n))) => n as usize,
                _ => return Err(io::Error::other(format!("origin: bad chunk size {size:?}"))),
            };
            if n == 0 {
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim_end_matches(['\r', '\n']).is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + n, 0);
            r.read_exact(&mut req.body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let n: usize = len
            .trim()
            .parse()
            .map_err(|_| io::Error::other("origin: bad Content-Length"))?;
        req.body_framing = Some("length");
        req.body.resize(n, 0);
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// Writes `route`; returns whether the connection must close afterwards.
fn write_response<W: Write>(
    w: &mut W,
    route: &Route,
    head_only: bool,
    client_close: bool,
    keep_alive_timeout: Option<u64>,
) -> io::Result<bool> {
    if let Some(d) = route.delay {
        thread::sleep(d);
    }
    let close = client_close || route.framing == Framing::Close;
    let mut head = format!("HTTP/1.1 {} {}\r\n", route.status, reason(route.status));
    for (n, v) in &route.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    match route.framing {
        Framing::ContentLength => {
            head.push_str(&format!("Content-Length: {}\r\n", route.body.len()))
        }
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::Close => {}
    }
    if close {
        head.push_str("Connection: close\r\n");
    } else if let Some(secs) = keep_alive_timeout {
        head.push_str(&format!(
            "Connection: keep-alive\r\nKeep-Alive: timeout={secs}\r\n"
        ));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    let no_body = head_only || route.status == 204 || route.status == 304;
    if !no_body {
        let piece = route.trickle.map_or(256 * 1024, |(p, _)| p);
        for part in route.body.chunks(piece) {
            if route.framing == Framing::Chunked {
                w.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
                w.write_all(part)?;
                w.write_all(b"\r\n")?;
            } else {
                w.write_all(part)?;
            }
            if let Some((_, pause)) = route.trickle {
                w.flush()?;
                thread::sleep(pause);
            }
        }
        if route.framing == Framing::Chunked {
            w.write_all(b"0\r\n\r\n")?;
        }
    }
    w.flush()?;
    Ok(close)
}

fn echo(req: &Recorded) -> Route {
    let hex: String = req.body.iter().map(|b| format!("{b:02x}")).collect();
    let v = serde_json::json!({
        "method": req.method,
        "target": req.target,
        "version": req.version,
        "headers": req.headers,
        "body_len": req.body.len(),
        "body_hex": hex,
    });
    Route::ok(v.to_string()).header("Content-Type", "application/json")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        421 => "Misdirected Request",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Decodes the `body_hex` of an `/echo` answer.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    //! The origin's own connection behaviour, checked with a raw TCP client.
    use super::*;

    /// Reads one answer framed by Content-Length (head and body may come in several reads).
    pub(crate) fn read_answer(c: &mut impl Read) -> String {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(i) = text.find("\r\n\r\n") {
                let len = text[..i]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= i + 4 + len {
                    return text;
                }
            }
            let n = c.read(&mut buf).expect("an answer");
            assert!(n > 0, "closed in the middle of an answer: {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn origin_helpers_idle_close_counts_from_the_last_answer() {
        let origin = Origin::builder()
            .idle_close(Duration::from_millis(600))
            .start();
        origin.route("/a", Route::ok("a"));
        let mut c = TcpStream::connect(origin.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Requests 200 ms apart keep it open; no Keep-Alive header unless asked for.
        let mut last_answer = Instant::now();
        for i in 0..3 {
            if i > 0 {
                thread::sleep(Duration::from_millis(200));
            }
            c.write_all(b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n").unwrap();
            let text = read_answer(&mut c);
            last_answer = Instant::now();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(!text.to_ascii_lowercase().contains("keep-alive"), "{text}");
        }
        let mut buf = [0u8; 16];
        let got = c.read(&mut buf);
        let idle = last_answer.elapsed();
        assert!(matches!(got, Ok(0)) || got.is_err(), "{got:?}");
        // Not before the limit; well before the 30 s an origin without it waits.
        assert!(
            idle >= Duration::from_millis(550) && idle < Duration::from_secs(3),
            "closed {idle:?} after the last answer, want 600 ms"
        );
        assert_eq!(origin.count("/a"), 3);
        assert_eq!(origin.accepted(), 1);
        let _second = TcpStream::connect(origin.addr()).unwrap();
        poll(|| origin.accepted() == 2);
    }

    #[test]
    fn origin_helpers_a_request_in_flight_at_the_idle_deadline_is_reset() {
        let origin = Origin::builder()
            .idle_close(Duration::from_millis(500))
            .in_flight(Duration::from_millis(200))
            .start();
        origin.route("/a", Route::ok("a"));
        let mut c = TcpStream::connect(origin.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n";
        c.write_all(req).unwrap();
        assert!(read_answer(&mut c).starts_with("HTTP/1.1 200"));
        // 100 ms before the deadline: inside the 200 ms lag, so never answered.
        let idle_from = Instant::now();
        thread::sleep(Duration::from_millis(400));
        c.write_all(req).unwrap();
        let mut buf = [0u8; 64];
        let got = c.read(&mut buf);
        let closed_after = idle_from.elapsed();
        assert!(
            matches!(got, Ok(0)) || got.is_err(),
            "the in-flight request was answered: {got:?}"
        );
        assert!(
            closed_after >= Duration::from_millis(480) && closed_after < Duration::from_secs(3),
            "closed {closed_after:?} after the last answer, want 500 ms"
        );
        assert_eq!(origin.count("/a"), 1);
        // Before the lag window, a request is served.
        let mut c = TcpStream::connect(origin.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(req).unwrap();
        assert!(read_answer(&mut c).starts_with("HTTP/1.1 200"));
        thread::sleep(Duration::from_millis(50));
        c.write_all(req).unwrap();
        assert!(read_answer(&mut c).starts_with("HTTP/1.1 200"));
        assert_eq!(origin.count("/a"), 3);
    }

    #[test]
    fn origin_helpers_advertise_keep_alive_and_answer_a_client_hello_with_400() {
        let origin = Origin::builder().advertise_keep_alive(1).start();
        assert!(origin.url().starts_with("http://127.0.0.1:"));
        origin.route("/a", Route::ok("a"));
        let mut c = TcpStream::connect(origin.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n").unwrap();
        let text = read_answer(&mut c);
        assert!(
            text.contains("\r\nConnection: keep-alive\r\nKeep-Alive: timeout=1\r\n"),
            "{text}"
        );
        // The first bytes of a TLS ClientHello (handshake record, TLS 1.0 record version).
        let mut t = TcpStream::connect(origin.addr()).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        t.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0, 0, 1, 0])
            .unwrap();
        let mut out = Vec::new();
        let _ = t.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert_eq!(origin.requests().len(), 1, "the ClientHello is no request");
    }

    fn poll(f: impl FnMut() -> bool) {
        assert!(
            shmproxy_tests::harness::poll(Duration::from_secs(5), f),
            "condition not met within 5 s"
        );
    }
}

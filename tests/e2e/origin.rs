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

// A shared harness: not every test file uses every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
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
    stop: AtomicBool,
}

/// The running origin. Dropping it stops accepting (open connections finish on their own).
pub struct Origin {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Origin {
    /// Binds 127.0.0.1 on a free port and starts accepting.
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("origin: bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        thread::Builder::new()
            .name("origin-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let st = st.clone();
                    let _ = thread::Builder::new()
                        .name("origin-conn".into())
                        .spawn(move || {
                            let _ = serve(conn, &st);
                        });
                }
            })
            .expect("origin: spawn");
        Origin { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `cached --origin`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

fn serve(conn: TcpStream, st: &State) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
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
        let close = write_response(&mut writer, &route, head_only, client_close)?;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request; `Ok(None)` on a clean close before any byte.
fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Recorded>> {
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
            let size = size.trim_end_matches(['\r', '\n']);
            let size = size.split(';').next().unwrap_or_default().trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("origin: bad chunk size {size:?}")))?;
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
fn write_response(
    w: &mut TcpStream,
    route: &Route,
    head_only: bool,
    client_close: bool,
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
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
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

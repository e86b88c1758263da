//! A blocking mini HTTP/1.1 client over one keep-alive `TcpStream`, with timeouts. It streams
//! each body into a caller's sink (so a 16 MiB body is hashed, not buffered) and reports
//! framing problems — a body cut short of its `Content-Length`, a malformed head — as errors.
//! After any error the connection is dropped; the next request opens a new one.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The status line and the headers that matter to the client.
#[derive(Debug, Default)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
}

/// One keep-alive connection to `addr`, opened on demand.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    /// Ask for `Connection: close` (one request per connection).
    close: bool,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Client {
            addr,
            timeout,
            close: false,
            conn: None,
        }
    }

    /// Makes every request ask for `Connection: close`, so each one opens a fresh connection.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// `GET path`, feeding the body to `sink`; returns the head and the body length.
    pub fn get(&mut self, path: &str, sink: &mut dyn FnMut(&[u8])) -> io::Result<(Head, u64)> {
        let result = self.exchange(path, sink);
        match &result {
            Ok((head, _)) if !head.close && !self.close => {}
            _ => self.conn = None,
        }
        result
    }

    /// `GET path` collecting the body (for small answers such as the stats JSON).
    pub fn get_body(&mut self, path: &str) -> io::Result<(u16, Vec<u8>)> {
        let mut body = Vec::new();
        let (head, _) = self.get(path, &mut |b| body.extend_from_slice(b))?;
        Ok((head.status, body))
    }

    fn exchange(&mut self, path: &str, sink: &mut dyn FnMut(&[u8])) -> io::Result<(Head, u64)> {
        let close = if self.close {
            "Connection: close\r\n"
        } else {
            ""
        };
        let conn = self.connection()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: stress\r\nUser-Agent: shmproxy-stress\r\n{close}\r\n"
        );
        conn.get_mut().write_all(request.as_bytes())?;
        let head = read_head(conn)?;
        let len = read_body(conn, &head, sink)?;
        Ok((head, len))
    }

    fn connection(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads the status line and headers.
fn read_head(conn: &mut BufReader<TcpStream>) -> io::Result<Head> {
    let mut head = Head::default();
    let mut total = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = conn.read_until(b'\n', &mut line)?;
        if n == 0 {
            let what = if total == 0 {
                "before the answer"
            } else {
                "inside the head"
            };
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed {what}"),
            ));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(bad(format!("response head over {MAX_HEAD} bytes")));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if head.status == 0 {
            parse_status_line(text, &mut head)?;
        } else if text.is_empty() {
            return Ok(head);
        } else {
            parse_header(text, &mut head)?;
        }
    }
}

fn parse_status_line(line: &str, head: &mut Head) -> io::Result<()> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match (version, status) {
        ("HTTP/1.1", Some(s)) => head.status = s,
        ("HTTP/1.0", Some(s)) => {
            head.status = s;
            head.close = true;
        }
        _ => return Err(bad(format!("bad status line {line:?}"))),
    }
    Ok(())
}

fn parse_header(line: &str, head: &mut Head) -> io::Result<()> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
    let value = value.trim();
    if name.eq_ignore_ascii_case("content-length") {
        let n = value
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
        if head.content_length.is_some_and(|old| old != n) {
            return Err(bad("conflicting Content-Length headers".into()));
        }
        head.content_length = Some(n);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        head.chunked = value.to_ascii_lowercase().ends_with("chunked");
    } else if name.eq_ignore_ascii_case("connection") {
        let v = value.to_ascii_lowercase();
        if v.contains("close") {
            head.close = true;
        } else if v.contains("keep-alive") {
            head.close = false;
        }
    }
    Ok(())
}

/// Reads the body as the head frames it; returns its length.
fn read_body(
    conn: &mut BufReader<TcpStream>,
    head: &Head,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    if matches!(head.status, 100..=199 | 204 | 304) {
        return Ok(0);
    }
    if head.chunked {
        read_chunked(conn, sink)
    } else if let Some(len) = head.content_length {
        read_exact_len(conn, len, sink)?;
        Ok(len)
    } else if head.close {
        read_to_eof(conn, sink)
    } else {
        Err(bad(
            "keep-alive answer without Content-Length or chunked framing".into(),
        ))
    }
}

fn read_exact_len(
    conn: &mut BufReader<TcpStream>,
    len: u64,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let buf = conn.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("truncated body: {} of {len} bytes", len - left),
            ));
        }
        let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        sink(&buf[..take]);
        conn.consume(take);
        left -= take as u64;
    }
    Ok(())
}

fn read_chunked(conn: &mut BufReader<TcpStream>, sink: &mut dyn FnMut(&[u8])) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let line = read_line(conn)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            while !read_line(conn)?.is_empty() {}
            return Ok(total);
        }
        read_exact_len(conn, size, sink)?;
        total += size;
        if !read_line(conn)?.is_empty() {
            return Err(bad("chunk not followed by CRLF".into()));
        }
    }
}

fn read_line(conn: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = Vec::new();
    if conn.read_until(b'\n', &mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a chunked body",
        ));
    }
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

fn read_to_eof(conn: &mut BufReader<TcpStream>, sink: &mut dyn FnMut(&[u8])) -> io::Result<u64> {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        sink(&buf[..n]);
        total += n as u64;
    }
}

//! A static-file origin for the stress tool's origin modes (`--chaos --origin`, `--pin-kills`):
//! serves the files under a root over HTTP/1.1 keep-alive with `Cache-Control: max-age=3600`,
//! so `cached` stores them and publishes them in the arena, from which the workers answer
//! their hits (files of a document root never are). A missing file is `404` with a fixed body
//! and `Cache-Control: no-store`. Only GET and HEAD; request bodies are not read. One thread
//! per connection; the threads live as long as the process. It counts the requests it
//! answered, so a run can tell hits from fetches.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const NOT_FOUND: &[u8] = b"no such file\n";

pub struct FileOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl FileOrigin {
    pub fn start(root: &Path) -> Result<FileOrigin, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("origin: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("origin: {e}"))?;
        let requests = Arc::new(AtomicU64::new(0));
        let (root, count) = (root.to_path_buf(), Arc::clone(&requests));
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, count) = (root.clone(), Arc::clone(&count));
                thread::spawn(move || serve(conn, &root, &count));
            }
        });
        Ok(FileOrigin { addr, requests })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }
}

fn serve(conn: TcpStream, root: &Path, count: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut input = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let (method, target) = (method.to_string(), target.to_string());
        let mut close = false;
        loop {
            let mut h = String::new();
            match input.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            close |= lower.starts_with("connection:") && lower.contains("close");
        }
        count.fetch_add(1, Relaxed);
        let path = target.split('?').next().unwrap_or("/");
        let file: Option<PathBuf> = (!path.contains(".."))
            .then(|| root.join(path.trim_start_matches('/')))
            .filter(|p| p.is_file());
        let (status, extra, body) = match file.and_then(|p| std::fs::read(p).ok()) {
            Some(b) => ("200 OK", "Cache-Control: max-age=3600\r\n", b),
            None => (
                "404 Not Found",
                "Cache-Control: no-store\r\n",
                NOT_FOUND.to_vec(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Content-Type: application/octet-stream\r\n\r\n",
            body.len()
        );
        let mut ok = out.write_all(head.as_bytes()).is_ok();
        if method != "HEAD" {
            ok = ok && out.write_all(&body).is_ok();
        }
        if !ok || close {
            return;
        }
    }
}

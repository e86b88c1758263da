//! Health of origin servers. A server of a site with a `health` table is checked every
//! `interval` by a `GET path` answered 2xx or 3xx within `timeout` (HAProxy's `option
//! httpchk`); `fall` failed checks in a row take it out, `rise` good ones bring it back.
//! Failed connections of real requests count as failed checks too (passive). A server of
//! a site without the table is only probed while it is out, by connecting to it.
//!
//! One thread per server (`cd-health`), so a slow server never delays another's checks;
//! each check is bounded by its timeout, and the threads stop with the daemon.

use super::{Server, SiteUp, Upstreams};
use common::config::HostHeader;
use common::supervise::supervised;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a sleeping checker looks at the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Starts a checker per server; they stop soon after `stop` is set.
pub fn start(ups: &Arc<Upstreams>, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for (s, site) in ups.sites().iter().enumerate() {
        for i in 0..site.servers.len() {
            let (ups, stop) = (Arc::clone(ups), Arc::clone(stop));
            let spawned = std::thread::Builder::new()
                .name("cd-health".into())
                .spawn(move || {
                    supervised("cd-health", || {}, || checker(ups.site(s), i, &stop));
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => log::warn!("cannot start a health checker: {e}"),
            }
        }
    }
    threads
}

fn checker(site: &SiteUp, index: usize, stop: &AtomicBool) {
    let server = &site.servers[index];
    let rules = site.rules();
    let probe = site
        .site
        .health
        .as_ref()
        .map(|h| server.make.probe(h.timeout));
    let host = check_host(site, server);
    let mut next = Instant::now() + rules.interval;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(TICK.min(next - now));
            continue;
        }
        next = now + rules.interval;
        let result = match &probe {
            Some(agent) => {
                let result = check(agent, server, &host, &rules.path);
                if let Some(r) = site.row(index) {
                    r.health_checked(result.is_ok());
                }
                result
            }
            None if server.is_up() => continue,
            None => connect(server, rules.timeout),
        };
        match result {
            Ok(()) => site.server_succeeded(index),
            Err(why) => {
                log::debug!("health check of {} failed: {why}", server.url);
                site.server_failed(index, &why)
            }
        }
    }
}

/// The `Host` of a check: what the site sends, or for `client` its first literal name.
fn check_host(site: &SiteUp, server: &Server) -> String {
    match &site.site.host_header {
        HostHeader::Name(n) => n.clone(),
        HostHeader::Client => site
            .site
            .hosts
            .iter()
            .find(|h| !h.starts_with('*'))
            .cloned()
            .unwrap_or_else(|| server.authority.clone()),
        HostHeader::Origin => server.authority.clone(),
    }
}

fn check(agent: &ureq::Agent, server: &Server, host: &str, path: &str) -> Result<(), String> {
    let req = ureq::http::Request::get(format!("{}{path}", server.base))
        .header("Host", host)
        .header("User-Agent", "shmproxy-health")
        .body(())
        .map_err(|e| e.to_string())?;
    let mut resp = agent.run(req).map_err(|e| super::failure(e).to_string())?;
    // Read (a bounded part of) the body so the check ends cleanly.
    let _ = resp.body_mut().with_config().limit(64 << 10).read_to_vec();
    match resp.status().as_u16() {
        200..=399 => Ok(()),
        s => Err(format!("status {s}")),
    }
}

fn connect(server: &Server, timeout: Duration) -> Result<(), String> {
    let addrs = (
        server.origin.host.trim_matches(['[', ']']),
        server.origin.port,
    )
        .to_socket_addrs()
        .map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

//! End-to-end tests of shmproxy: they start the real `proxy` and `cached` binaries (build them
//! first: `cargo build --workspace --bins`), each test with its own instance name, free port,
//! temp document root or in-process origin, and a watchdog deadline.
//!
//! Layout: `harness` (instances, watchdog), `client` (blocking HTTP/1.1 client), `origin`
//! (scriptable origin server, plain or TLS), `tls` (a CA and certificates made at test time);
//! one file per acceptance area of the pipeline issue.

mod client;
mod harness;
mod origin;
mod tls;

mod accesslog;
mod badinput;
mod bodies;
mod caching;
mod chaos_short;
mod cluster;
mod faults;
mod hostile_origin;
mod hostile_panics;
mod hostile_requests;
mod hostile_slow;
mod http;
mod idle;
mod install;
mod lifecycle;
mod mq_limits;
mod observability;
mod reload;
mod rfc_corners;
mod signals;
mod sites_balance;
mod sites_tls;
mod sites_vhost;
mod stale;
mod stress_short;

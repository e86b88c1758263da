//! End-to-end tests of shmproxy: they start the real `proxy` and `cached` binaries (build them
//! first: `cargo build --workspace --bins`), each test with its own instance name, free port,
//! temp document root or in-process origin, and a watchdog deadline.
//!
//! Layout: the harness (instances, watchdog) and the blocking HTTP/1.1 client come from the
//! package's library (`tests/support/`, shared with the `stress` tool); `origin` (scriptable
//! origin server, plain or TLS) and `tls` (a CA and certificates made at test time) are local;
//! one file per acceptance area of the pipeline issue.

mod origin;
mod tls;

mod accesslog;
mod arena;
mod arena_stream;
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

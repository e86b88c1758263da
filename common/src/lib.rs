//! Code shared by the `proxy` and `cached` daemons: configuration, IPC names, the wire
//! protocol, the shared-memory segment pool with its chunked semaphore handoff, the doorbell
//! message queue, the cache arena and what a hit served from it needs (`hit`), fd passing, callbacks lent for one call (`lent`), the stats regions, the client request parser,
//! HTTP helpers and the HTTP caching rules (`cache_policy`), a cost-bounded LRU, process
//! helpers, signal dispositions, thread supervision, the logger and systemd readiness
//! notifications.
//!
//! All `unsafe` code of the project lives here: blocks in `shm`, `sem`, `pool`, `arena`,
//! `process`, `lent` (a callback lent to a thread for one call), `fdpass` (taking ownership of received or accepted descriptors, an `ioctl`) and
//! `mq` (its descriptor borrowed for `poll`); the marker `ShmSafe` (declared in `shm`)
//! implemented for the shared-memory types of `shm`, `sem`, `pool`, `arena` and `stats`; and a
//! `raise` in a test of `signals`.

pub mod arena;
pub mod cache_policy;
pub mod config;
pub mod fdpass;
pub mod hit;
pub mod http;
pub mod lent;
pub mod logger;
pub mod lru;
pub mod mq;
pub mod names;
pub mod node;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod request;
pub mod sem;
pub mod service;
pub mod shm;
pub mod signals;
pub mod stats;
pub mod supervise;

pub use names::Names;

//! Code shared by the `proxy` and `cached` daemons: configuration, IPC names, the wire
//! protocol, the shared-memory segment pool with its chunked semaphore handoff, the doorbell
//! message queue, fd passing, the stats regions, process helpers and HTTP helpers.
//!
//! All `unsafe` code of the project lives here, in `shm`, `sem`, `pool` and `process`
//! (and a `raise` in a test of `signals`).

pub mod config;
pub mod fdpass;
pub mod http;
pub mod logger;
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

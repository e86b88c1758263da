//! What the e2e tests and the `stress` tool share: the one daemon harness and the one raw
//! HTTP/1.1 client.
//!
//! - [`harness`]: an [`harness::Instance`] starts the real `proxy` and `cached` binaries under a
//!   unique instance name and a free port, polls their readiness, and on stop checks the exit
//!   contract (status 0 within 5 s, no surviving worker, nothing left in `/dev/shm` or the
//!   mqueue namespace); process and IPC inspection and [`harness::poll_until`] come with it.
//! - [`client`]: a blocking client that sends raw bytes and reads exactly one response at a
//!   time, collected ([`client::Conn::read_response`]) or streamed into a sink
//!   ([`client::Client`], for bodies too large to buffer).
//!
//! It never touches a process it did not spawn, and never kills anything by name.

pub mod client;
pub mod harness;

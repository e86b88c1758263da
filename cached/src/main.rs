//! `cached`: owns the L2 cache and the request queue; answers the proxy's doorbells from a
//! document root (disk) or the sites' origin servers, streaming each answer through the
//! segment. The request path reads top to bottom: `receiver` (threads, doorbells) →
//! `serve` (one request) → `phase` (its cache phase) → `revalidate`, `fill`, `store`,
//! `answer` (carrying it out) → `source`, `upstream` (fetching). They all share `ctx`;
//! none calls back up.
#![forbid(unsafe_code)]

mod answer;
mod cache;
mod cli;
mod ctx;
mod error;
mod fill;
mod phase;
mod published;
mod receiver;
mod refresh;
mod respond;
mod revalidate;
mod serve;
mod source;
mod store;
mod stored;
mod upstream;

use std::process::ExitCode;

fn main() -> ExitCode {
    common::logger::init("cached");
    // Bodies pass through cached's heap on every fill: their memory must not stay behind.
    if !common::process::return_large_frees() {
        log::debug!("the allocator keeps its own mmap threshold");
    }
    let (cfg, source) = match cli::parse() {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cached: {e:#}");
            return ExitCode::from(2);
        }
    };
    match receiver::run(cfg, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cached: {e:#}");
            ExitCode::FAILURE
        }
    }
}

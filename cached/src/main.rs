//! `cached`: owns the L2 LRU and the request queue; answers the proxy's doorbells from a
//! document root (disk) or an origin URL, streaming each answer through the segment.
#![forbid(unsafe_code)]

mod cache;
mod cli;
mod receiver;
mod refresh;
mod respond;
mod source;
mod stored;
mod upstream;

use std::process::ExitCode;

fn main() -> ExitCode {
    common::logger::init("cached");
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

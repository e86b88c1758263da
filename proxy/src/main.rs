//! `proxy`: the front daemon. A master binds, forks workers and passes them accepted
//! connections over `SCM_RIGHTS`; workers speak HTTP/1.1 and fetch through `cached`.
#![forbid(unsafe_code)]

mod cli;
mod master;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    common::logger::init("proxy-master");
    let cfg = match cli::parse() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match master::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

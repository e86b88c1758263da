//! `proxy`: the front daemon. A master binds, forks workers and passes them accepted
//! connections over `SCM_RIGHTS`; workers speak HTTP/1.1 and fetch through `cached`.
#![forbid(unsafe_code)]

mod cli;
mod master;
mod shared;
mod stats_cmd;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    common::logger::init("proxy-master");
    if std::env::args_os().nth(1).is_some_and(|a| a == "stats") {
        return stats_cmd::main();
    }
    let (cfg, source) = match cli::parse() {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match master::run(cfg, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! A tiny `log` backend: one line per record on stderr, prefixed with the process name
//! (`proxy-master`, `proxy-w3`, `cached`) and pid.

use std::io::Write;
use std::sync::RwLock;

struct Logger {
    name: RwLock<String>,
}

static LOGGER: Logger = Logger {
    name: RwLock::new(String::new()),
};

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let name = self.name.read().map(|n| n.clone()).unwrap_or_default();
        let line = format!(
            "{name}[{}]: {}: {}\n",
            std::process::id(),
            r.level().as_str().to_ascii_lowercase(),
            r.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger (level from `SHMPROXY_LOG`: error, warn, info, debug; default info).
pub fn init(process_name: &str) {
    let level = match std::env::var("SHMPROXY_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    rename(process_name);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Renames the process in log lines (a forked worker calls it with `proxy-wN`).
pub fn rename(process_name: &str) {
    if let Ok(mut n) = LOGGER.name.write() {
        *n = process_name.to_string();
    }
}

//! Command line of `proxy`: every flag is also a key of `[proxy]` in the config file.

use common::config::{parse_command_line, ConfigError, ProxyConfig};
use std::path::PathBuf;

const HELP: &str = "\
proxy — the front daemon of shmproxy: accepts HTTP/1.1 clients and fetches through cached.

Usage: proxy [OPTIONS]
       proxy stats [--instance NAME] [--json] [--watch]   (see `proxy stats --help`)

Options (each is also a key in the config file; flags win):
  --config FILE           TOML file with `instance` and a [proxy] section
                          [$SHMPROXY_CONFIG, else /etc/shmproxy/shmproxy.toml if it
                          exists, else built-in defaults]
  --instance NAME         instance name shared with cached           [shmproxy]
  --node NAME             this pair's name in Via, X-Served-By, Cache-Status and
                          stats (a cluster node); default: the host name
  --listen ADDR           address to listen on; repeat or use commas for several;
                          :PORT = every IPv4 address, localhost = 127.0.0.1 [127.0.0.1:8080]
  --workers N             worker processes                           [2]
  --threads N             request threads per worker                 [64]
  --segments N            shared-memory segments in the pool         [128]
  --segment-size SIZE     bytes per segment (1KiB ..= 64MiB)         [256KiB]
  --access-log FILE       access log file                            [none]
  --access-log-format FMT combined, json, or a field list of $variables, e.g.
                          '$remote_addr $status $body_bytes_sent $cache'  [combined]
  --stats-allow LIST      CIDRs that may read /__shmproxy/ (commas)  [127.0.0.0/8,::1]
  --trusted-proxies LIST  CIDRs whose X-Forwarded-*/Forwarded are kept (commas)  []
  --drain-ms DURATION     on SIGTERM, keep serving this long while /__shmproxy/health
                          answers 503 (load balancer drain)           [0]
  --upgrade               take the listening sockets over from the running master of
                          this instance (zero-downtime binary upgrade), which then
                          drains and exits
  --check                 load and validate the configuration (file and flags), print
                          `configuration OK: FILE` and exit 0, or the error and exit 2;
                          binds nothing and creates no IPC object
  --version               print the version and the git commit
  -h, --help              this text

Sizes take k, m, g units (powers of 1024: 64KiB, 256m); durations take ms, s, m, h (5s).
An error names the file, line and column (or the flag), the key and what was expected.

Signals: SIGTERM/SIGINT/SIGQUIT stop gracefully; SIGHUP re-reads the configuration and
replaces the workers without closing the listener; SIGUSR1 reopens the access log; SIGUSR2,
SIGALRM and the other signals that would kill by default are logged and ignored.
";

/// Flags and the config keys they set.
const KEYS: &[(&str, &str)] = &[
    ("instance", "instance"),
    ("node", "node"),
    ("drain-ms", "proxy.drain_ms"),
    ("listen", "proxy.listen"),
    ("workers", "proxy.workers"),
    ("threads", "proxy.threads"),
    ("segments", "proxy.segments"),
    ("segment-size", "proxy.segment_size"),
    ("access-log", "proxy.access_log"),
    ("access-log-format", "proxy.access_log_format"),
    ("stats-allow", "proxy.stats_allow"),
    ("trusted-proxies", "proxy.trusted_proxies"),
];

/// Where the configuration came from, so SIGHUP can read it again.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub flags: Vec<(String, String)>,
    /// `--upgrade`: take the listening socket over from the running master.
    pub upgrade: bool,
}

impl Source {
    pub fn load(&self) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::load(self.file.as_deref(), &self.flags)
    }
}

/// `proxy --version`.
pub const VERSION: &str = concat!(
    "proxy ",
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SHMPROXY_GIT_COMMIT"),
    ")"
);

/// `Ok(None)` when there is nothing to run: help or the version was printed, or `--check`
/// found the configuration valid.
pub fn parse() -> Result<Option<(ProxyConfig, Source)>, ConfigError> {
    let Some(cl) = parse_command_line(HELP, KEYS, &["upgrade", "check", "version"])? else {
        return Ok(None);
    };
    if cl.switches.contains(&"version") {
        println!("{VERSION}");
        return Ok(None);
    }
    let source = Source {
        upgrade: cl.switches.contains(&"upgrade"),
        file: cl.file.clone(),
        flags: cl.flags.clone(),
    };
    let cfg = source.load()?;
    if cl.switches.contains(&"check") {
        println!("configuration OK: {}", cl.describe());
        return Ok(None);
    }
    log::info!("{VERSION}; configuration: {}", cl.describe());
    Ok(Some((cfg, source)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_flags_and_defaults_match_the_key_list_and_the_readme() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        common::config::keys::check_help(HELP, KEYS, &readme).unwrap_or_else(|e| panic!("{e}"));
    }
}

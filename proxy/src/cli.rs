//! Command line of `proxy`: every flag is also a key of `[proxy]` in the config file.

use common::config::{parse_command_line, ConfigError, ProxyConfig};
use std::path::PathBuf;

const HELP: &str = "\
proxy — the front daemon of shmproxy: accepts HTTP/1.1 clients and fetches through cached.

Usage: proxy [OPTIONS]
       proxy stats [--instance NAME] [--json] [--watch]   (see `proxy stats --help`)

Options (each is also a key in the config file; flags win):
  --config FILE           TOML file with `instance` and a [proxy] section
  --instance NAME         instance name shared with cached           [shmproxy]
  --listen ADDR:PORT      address to listen on                       [127.0.0.1:8080]
  --workers N             worker processes                           [2]
  --threads N             request threads per worker                 [64]
  --segments N            shared-memory segments in the pool         [128]
  --segment-size BYTES    bytes per segment (1024 ..= 67108864)      [262144]
  --access-log FILE       access log file (Combined Log Format + more)  [none]
  --stats-allow LIST      CIDRs that may read /__shmproxy/ (commas)  [127.0.0.0/8,::1]
  --trusted-proxies LIST  CIDRs whose X-Forwarded-*/Forwarded are kept (commas)  []
  --upgrade               take the listening socket over from the running master of
                          this instance (zero-downtime binary upgrade), which then
                          drains and exits
  -h, --help              this text

Signals: SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the configuration and replaces
the workers without closing the listener; SIGUSR1 reopens the access log.
";

/// Flags and the config keys they set.
const KEYS: &[(&str, &str)] = &[
    ("instance", "instance"),
    ("listen", "proxy.listen"),
    ("workers", "proxy.workers"),
    ("threads", "proxy.threads"),
    ("segments", "proxy.segments"),
    ("segment-size", "proxy.segment_size"),
    ("access-log", "proxy.access_log"),
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

/// `Ok(None)` when help was printed.
pub fn parse() -> Result<Option<(ProxyConfig, Source)>, ConfigError> {
    let Some(cl) = parse_command_line(HELP, KEYS, &["upgrade"])? else {
        return Ok(None);
    };
    let source = Source {
        upgrade: cl.switches.contains(&"upgrade"),
        file: cl.file,
        flags: cl.flags,
    };
    Ok(Some((source.load()?, source)))
}

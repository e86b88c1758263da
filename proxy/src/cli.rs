//! Command line of `proxy`: every flag is also a key of `[proxy]` in the config file.

use common::config::{ConfigError, ProxyConfig};
use std::path::PathBuf;

const HELP: &str = "\
proxy — the front daemon of shmproxy: accepts HTTP/1.1 clients and fetches through cached.

Usage: proxy [OPTIONS]

Options (each is also a key in the config file; flags win):
  --config FILE           TOML file with `instance` and a [proxy] section
  --instance NAME         instance name shared with cached           [shmproxy]
  --listen ADDR:PORT      address to listen on                       [127.0.0.1:8080]
  --workers N             worker processes                           [2]
  --threads N             request threads per worker                 [64]
  --segments N            shared-memory segments in the pool         [128]
  --segment-size BYTES    bytes per segment (1024 ..= 67108864)      [262144]
  -h, --help              this text
";

/// `Ok(None)` when help was printed.
pub fn parse() -> Result<Option<ProxyConfig>, ConfigError> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut file: Option<PathBuf> = None;
    let mut flags = Vec::new();
    let bad = |e: lexopt::Error| ConfigError(format!("command line: {e}"));
    while let Some(arg) = parser.next().map_err(bad)? {
        let key = match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(None);
            }
            Long("config") => {
                file = Some(parser.value().map_err(bad)?.into());
                continue;
            }
            Long("instance") => "instance",
            Long("listen") => "proxy.listen",
            Long("workers") => "proxy.workers",
            Long("threads") => "proxy.threads",
            Long("segments") => "proxy.segments",
            Long("segment-size") => "proxy.segment_size",
            other => return Err(bad(other.unexpected())),
        };
        let value = parser.value().map_err(bad)?.string().map_err(bad)?;
        flags.push((key.to_string(), value));
    }
    ProxyConfig::load(file.as_deref(), &flags).map(Some)
}

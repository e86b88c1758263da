//! Command line of `cached`: every flag is also a key of `[cached]` in the config file.

use common::config::{CachedConfig, ConfigError};
use std::path::PathBuf;

const HELP: &str = "\
cached — the cache daemon of shmproxy: owns the LRU, serves a document root or an origin.

Usage: cached [OPTIONS]

Options (each is also a key in the config file; flags win):
  --config FILE           TOML file with `instance` and a [cached] section
  --instance NAME         instance name shared with the proxy        [shmproxy]
  --root DIR              document root served when no origin is set [www]
  --origin URL            origin to forward to (http://host:port[/prefix])
  --threads N             receiver threads                           [256]
  --capacity BYTES        LRU capacity                               [268435456]
  --max-object-size BYTES larger objects stream through unstored     [8388608]
  -h, --help              this text
";

/// `Ok(None)` when help was printed.
pub fn parse() -> Result<Option<CachedConfig>, ConfigError> {
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
            Long("root") => "cached.root",
            Long("origin") => "cached.origin",
            Long("threads") => "cached.threads",
            Long("capacity") => "cached.capacity",
            Long("max-object-size") => "cached.max_object_size",
            other => return Err(bad(other.unexpected())),
        };
        let value = parser.value().map_err(bad)?.string().map_err(bad)?;
        flags.push((key.to_string(), value));
    }
    CachedConfig::load(file.as_deref(), &flags).map(Some)
}

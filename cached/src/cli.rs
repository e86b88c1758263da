//! Command line of `cached`: every flag is also a key of `[cached]` in the config file.

use common::config::{parse_command_line, CachedConfig, ConfigError};

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
  --set-cookie POLICY     storable answers with Set-Cookie: pass | store | strip [pass]
  -h, --help              this text
";

/// Flags and the config keys they set.
const KEYS: &[(&str, &str)] = &[
    ("instance", "instance"),
    ("root", "cached.root"),
    ("origin", "cached.origin"),
    ("threads", "cached.threads"),
    ("capacity", "cached.capacity"),
    ("max-object-size", "cached.max_object_size"),
    ("set-cookie", "cached.set_cookie"),
];

/// `Ok(None)` when help was printed.
pub fn parse() -> Result<Option<CachedConfig>, ConfigError> {
    let Some(cl) = parse_command_line(HELP, KEYS, &[])? else {
        return Ok(None);
    };
    CachedConfig::load(cl.file.as_deref(), &cl.flags).map(Some)
}

//! Command line of `cached`: every flag is also a key of `[cached]` in the config file.

use common::config::{parse_command_line, CachedConfig, ConfigError};

const HELP: &str = "\
cached — the cache daemon of shmproxy: owns the LRU, serves a document root or origin sites.

Usage: cached [OPTIONS]

Options (each is also a key in the config file; flags win):
  --config FILE           TOML file with `instance`, a [cached] section and [[site]] tables
  --instance NAME         instance name shared with the proxy        [shmproxy]
  --root DIR              document root served when no site is set   [www]
  --origin URL            a server of the default site: http(s)://host[:port][/prefix];
                          repeat for several servers. Replaces the servers of the file's
                          default [[site]] (the one without hosts) or adds a default site
  --tls-ca-file FILE      PEM file of extra CA certificates for https:// servers
                          (added to the system's trust store)
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
    ("tls-ca-file", "cached.tls_ca_file"),
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

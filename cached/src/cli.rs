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
  --capacity SIZE         LRU capacity                               [256MiB]
  --max-object-size SIZE  larger objects stream through unstored     [8MiB]
  --set-cookie POLICY     storable answers with Set-Cookie: pass | store | strip [pass]
  -h, --help              this text

Sizes take k, m, g units (powers of 1024: 64KiB, 256m); durations take ms, s, m, h (5s).
An error names the file, line and column (or the flag), the key and what was expected.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_flags_and_defaults_match_the_key_list_and_the_readme() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for (flag, key) in KEYS {
            let line = HELP
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("--{flag} ")))
                .unwrap_or_else(|| panic!("--help does not list --{flag}"));
            let shown = line
                .trim_end()
                .strip_suffix(']')
                .and_then(|l| l.rfind('[').map(|b| &l[b + 1..]));
            if let Some(shown) = shown {
                common::config::keys::check_documented_default(key, shown, false)
                    .unwrap_or_else(|e| panic!("--help: {line}: {e}"));
            }
            let row = readme
                .lines()
                .find(|l| l.contains(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("README's configuration table lacks {key}"));
            assert!(
                row.contains(&format!("`--{flag}`")),
                "README: {key} is --{flag}: {row}"
            );
        }
    }
}

//! Command line of `cached`: every flag is also a key of `[cached]` in the config file.

use common::config::{parse_command_line, CachedConfig, CommandLine, ConfigError};

const HELP: &str = "\
cached — the cache daemon of shmproxy: owns the LRU, serves a document root or origin sites.

Usage: cached [OPTIONS]

Options (each is also a key in the config file; flags win):
  --config FILE           TOML file with `instance`, a [cached] section and [[site]] tables
                          [$SHMPROXY_CONFIG, else /etc/shmproxy/shmproxy.toml if it
                          exists, else built-in defaults]
  --instance NAME         instance name shared with the proxy        [shmproxy]
  --node NAME             this pair's name in the Via sent to the origin (the proxy's
                          --node); default: the host name
  --root DIR              document root served when no site is set   [/var/www/shmproxy]
  --origin URL            a server of the default site: http(s)://host[:port][/prefix];
                          repeat for several servers. Replaces the servers of the file's
                          default [[site]] (the one without hosts) or adds a default site
  --tls-ca-file FILE      PEM file of extra CA certificates for https:// servers
                          (added to the system's trust store)
  --threads N             worker threads (one transfer each)         [256]
  --capacity SIZE         cache capacity (the LRU and the arena)     [256MiB]
  --max-object-size SIZE  larger objects stream through unstored     [8MiB]
  --set-cookie POLICY     storable answers with Set-Cookie: pass | store | strip [pass]
  --check                 load and validate the configuration (file and flags, the
                          document root or the TLS trust store), print
                          `configuration OK: FILE` and exit 0, or the error and exit 2;
                          creates no IPC object
  --version               print the version and the git commit
  -h, --help              this text

Sizes take k, m, g units (powers of 1024: 64KiB, 256m); durations take ms, s, m, h (5s).
An error names the file, line and column (or the flag), the key and what was expected.

Signals: SIGTERM/SIGINT/SIGQUIT stop gracefully; SIGHUP re-reads the configuration and
applies cached.set_cookie, grace_ms, keep_ms, heuristic_ttl_ms, revalidate_ms,
targeted_cache_control and purge_forward at once; every other key that changed is logged
as needing a restart (the cache stays warm); SIGUSR1 is logged (cached
writes no log file); SIGUSR2, SIGALRM and the other signals that would kill by default are
logged and ignored.
";

/// Flags and the config keys they set.
const KEYS: &[(&str, &str)] = &[
    ("instance", "instance"),
    ("node", "node"),
    ("root", "cached.root"),
    ("origin", "cached.origin"),
    ("tls-ca-file", "cached.tls_ca_file"),
    ("threads", "cached.threads"),
    ("capacity", "cached.capacity"),
    ("max-object-size", "cached.max_object_size"),
    ("set-cookie", "cached.set_cookie"),
];

/// `cached --version`.
pub const VERSION: &str = concat!(
    "cached ",
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SHMPROXY_GIT_COMMIT"),
    ")"
);

/// Where the configuration came from, so SIGHUP can read it again.
#[derive(Clone, Debug)]
pub struct Source(pub CommandLine);

impl Source {
    pub fn load(&self) -> Result<CachedConfig, ConfigError> {
        CachedConfig::load(self.0.file.as_deref(), &self.0.flags)
    }
}

/// `Ok(None)` when there is nothing to run: help or the version was printed, or `--check`
/// found the configuration valid.
pub fn parse() -> anyhow::Result<Option<(CachedConfig, Source)>> {
    let Some(cl) = parse_command_line(HELP, KEYS, &["check", "version"])? else {
        return Ok(None);
    };
    if cl.switches.contains(&"version") {
        println!("{VERSION}");
        return Ok(None);
    }
    let source = Source(cl);
    let cfg = source.load()?;
    if source.0.switches.contains(&"check") {
        check(&cfg)?;
        for w in cfg.warnings() {
            println!("warning: {w}");
        }
        println!("configuration OK: {}", source.0.describe());
        return Ok(None);
    }
    log::info!("{VERSION}; configuration: {}", source.0.describe());
    Ok(Some((cfg, source)))
}

/// What `--check` verifies beyond the configuration's values, as the start would: the
/// document root (disk mode) or the sites' TLS trust store (origin mode).
fn check(cfg: &CachedConfig) -> anyhow::Result<()> {
    if cfg.sites.is_empty() {
        crate::source::disk::document_root(cfg)?;
    } else {
        crate::upstream::Upstreams::check(cfg)?;
    }
    Ok(())
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

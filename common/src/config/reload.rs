//! What a SIGHUP may change in a running `cached`: [`CachedConfig::reloaded`] compares a
//! configuration read again with the running one, key by key. A key that only decides how
//! answers are stored and served takes effect from the next request on (*live*); a key that
//! shaped what was built at start (the cache and arena geometry, the doorbell queue, the
//! threads, the origin servers, their connections and timeouts) keeps its running value and
//! is named as needing a restart. Every field is classed here: a new field that is not fails
//! to compile (the destructuring below is exhaustive).

use super::CachedConfig;

/// The outcome of a reload: the configuration to run with from now on, and the keys that
/// changed, applied or kept at their running values.
#[derive(Debug)]
pub struct Reload {
    pub config: CachedConfig,
    pub applied: Vec<&'static str>,
    pub need_restart: Vec<&'static str>,
}

/// The name under which the sites are reported (`[[site]]` tables and `cached.origin`).
pub const SITES: &str = "the sites ([[site]], cached.origin)";

impl CachedConfig {
    /// The configuration `new` gives this running one: its live keys, and the running values
    /// of every other key.
    pub fn reloaded(&self, new: &CachedConfig) -> Reload {
        let mut config = self.clone();
        let mut applied = Vec::new();
        let mut need_restart = Vec::new();
        let CachedConfig {
            instance,
            node,
            purge_forward,
            root,
            sites,
            tls_ca_file,
            routes: _, // built from `sites`
            threads,
            capacity,
            max_object_size,
            connect_timeout,
            read_timeout,
            upstream_pool,
            max_header_bytes,
            upstream_idle,
            queue_capacity,
            revalidate,
            max_waiters,
            heuristic_floor,
            set_cookie,
            grace,
            keep,
            targeted_cache_control,
            strip_targeted,
        } = new;
        macro_rules! live {
            ($($field:ident => $key:literal),* $(,)?) => {$(
                if config.$field != *$field {
                    config.$field = $field.clone();
                    applied.push($key);
                }
            )*};
        }
        macro_rules! at_start {
            ($($field:ident => $key:expr),* $(,)?) => {$(
                if self.$field != *$field {
                    need_restart.push($key);
                }
            )*};
        }
        // Read per request.
        live!(
            purge_forward => "cached.purge_forward",
            revalidate => "cached.revalidate_ms",
            heuristic_floor => "cached.heuristic_ttl_ms",
            set_cookie => "cached.set_cookie",
            grace => "cached.grace_ms",
            keep => "cached.keep_ms",
            targeted_cache_control => "cached.targeted_cache_control",
        );
        // Built into long-lived state at start (`strip_targeted` too: the arena's copies
        // were made with it, and hits from there would disagree with hits from cached).
        at_start!(
            strip_targeted => "cached.strip_targeted",
            instance => "instance",
            node => "node",
            root => "cached.root",
            sites => SITES,
            tls_ca_file => "cached.tls_ca_file",
            threads => "cached.threads",
            capacity => "cached.capacity",
            max_object_size => "cached.max_object_size",
            connect_timeout => "cached.connect_timeout_ms",
            read_timeout => "cached.read_timeout_ms",
            upstream_pool => "cached.upstream_pool",
            max_header_bytes => "proxy.max_header_bytes",
            upstream_idle => "cached.upstream_idle_ms",
            queue_capacity => "cached.queue_capacity",
            max_waiters => "cached.max_waiters",
        );
        Reload {
            config,
            applied,
            need_restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::{Ty, KEYS};
    use super::*;

    fn load(flags: &[(String, String)]) -> CachedConfig {
        CachedConfig::load(None, flags).unwrap()
    }

    /// A value other than the default for every key cached reads (the flags form).
    fn changed_value(name: &str, ty: Ty) -> Option<String> {
        Some(match (name, ty) {
            ("cached.origin", _) => "http://127.0.0.1:9".into(),
            ("cached.set_cookie", _) => "strip".into(),
            ("cached.root", _) => "/nonexistent/x".into(),
            // Read at load: any readable file.
            ("cached.tls_ca_file", _) => concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            ("instance" | "node", _) => "other".into(),
            ("cached.targeted_cache_control", _) => "Surrogate-Control".into(),
            (_, Ty::Bool) => "true".into(),
            (_, Ty::Int { lo, .. } | Ty::Size { lo, .. }) => (lo + 3).to_string(),
            (_, Ty::Ms { lo, .. }) => format!("{}ms", lo + 7),
            _ => return None,
        })
    }

    #[test]
    fn every_key_cached_reads_is_either_applied_or_named_as_needing_a_restart() {
        let old = load(&[]);
        let none = old.reloaded(&load(&[]));
        assert!(none.applied.is_empty() && none.need_restart.is_empty());
        let mut seen = 0;
        let mut live = Vec::new();
        for k in KEYS {
            let cached_key =
                k.name.starts_with("cached.") || ["instance", "node"].contains(&k.name);
            let Some(value) = changed_value(k.name, k.ty).filter(|_| cached_key) else {
                continue;
            };
            let new = load(&[(k.name.to_string(), value.clone())]);
            let r = old.reloaded(&new);
            let name = if k.name == "cached.origin" {
                SITES
            } else {
                k.name
            };
            let reported: Vec<_> = r.applied.iter().chain(&r.need_restart).collect();
            assert_eq!(reported, [&name], "{}={value}", k.name);
            if r.applied.contains(&name) {
                live.push(name);
                assert_eq!(format!("{:?}", r.config), format!("{new:?}"), "{}", k.name);
            } else {
                assert_eq!(format!("{:?}", r.config), format!("{old:?}"), "{}", k.name);
            }
            seen += 1;
        }
        assert!(seen >= 20, "only {seen} keys checked");
        // The README's signal table names the live keys.
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let line = readme
            .lines()
            .find(|l| l.starts_with("| SIGHUP (cached)"))
            .expect("README: the SIGHUP (cached) row");
        for key in live {
            let short = key.trim_start_matches("cached.");
            assert!(
                line.contains(short),
                "README's SIGHUP (cached) row lacks {key}"
            );
        }
    }
}

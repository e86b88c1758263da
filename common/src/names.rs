//! IPC object names. Every name derives from the instance name, so several instances
//! (parallel tests, several nodes on one host) coexist. Nothing else builds IPC names.

/// The names of every IPC object of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The instance name itself.
    pub instance: String,
    /// Request doorbell queue, created and read by `cached`.
    pub queue: String,
    /// Segment pool, created by the proxy master.
    pub pool: String,
    /// Counters of the proxy (master and workers).
    pub stats_proxy: String,
    /// Counters of `cached`.
    pub stats_cached: String,
    /// The cache arena, created by `cached`, read by the proxy workers.
    pub arena: String,
}

impl Names {
    pub fn for_instance(instance: &str) -> Names {
        Names {
            instance: instance.to_string(),
            queue: format!("/{instance}.req"),
            pool: format!("/{instance}.pool"),
            stats_proxy: format!("/{instance}.stats.proxy"),
            stats_cached: format!("/{instance}.stats.cached"),
            arena: format!("/{instance}.arena"),
        }
    }
}

/// An instance name is 1..=32 bytes of `[A-Za-z0-9_-]`, so it is safe in every IPC name.
pub fn valid_instance(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_instance() {
        let n = Names::for_instance("t1");
        assert_eq!(n.queue, "/t1.req");
        assert_eq!(n.pool, "/t1.pool");
        assert_eq!(n.stats_proxy, "/t1.stats.proxy");
        assert_eq!(n.stats_cached, "/t1.stats.cached");
        assert_eq!(n.arena, "/t1.arena");
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(valid_instance("shmproxy"));
        assert!(valid_instance("t123-4_x"));
        assert!(!valid_instance(""));
        assert!(!valid_instance("a/b"));
        assert!(!valid_instance("a.b"));
        assert!(!valid_instance(&"x".repeat(33)));
    }
}

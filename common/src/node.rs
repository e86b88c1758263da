//! The node: one shmproxy pair's name in a cluster (config `node`, default the host name).
//! It names the pair in `Via` (`1.1 NAME (shmproxy)`, RFC 9110 §7.6.3), in `X-Served-By`, in
//! the cache name of `Cache-Status` (RFC 9211 §2) and in the stats; and a request whose `Via`
//! already names it has come round a loop (a shield whose origin is its own edge) and is
//! refused. Pure functions over strings, used by both daemons; no I/O but reading the host
//! name once at configuration time.

/// The default node name: the host name, or `shmproxy` when it cannot be read or is no
/// valid node name.
pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid(h))
        .unwrap_or_else(|| "shmproxy".to_string())
}

/// A node name is a `Via` received-by token (RFC 9110 `pseudonym` = token) short enough for a
/// label: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The `Via` member this node adds, for a message of HTTP version `version` (10 or 11).
pub fn via(version: u8, node: &str) -> String {
    let v = if version == 10 { "1.0" } else { "1.1" };
    format!("{v} {node} (shmproxy)")
}

/// The cache name of this node's `Cache-Status` member.
pub fn cache_name(node: &str) -> String {
    format!("shmproxy-{node}")
}

/// Does one of the `Via` field values (each a comma-separated list of `protocol received-by
/// [comment]`) name `node` as its received-by? Names compare case-insensitively, as host
/// names do.
pub fn loop_detected<'a>(via_values: impl IntoIterator<Item = &'a [u8]>, node: &str) -> bool {
    via_values.into_iter().any(|value| {
        value.split(|&b| b == b',').any(|member| {
            let mut words = member
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty());
            let _protocol = words.next();
            words
                .next()
                .is_some_and(|by| by.eq_ignore_ascii_case(node.as_bytes()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_via_that_names_the_node_is_a_loop() {
        let lp = |v: &[&str], n: &str| loop_detected(v.iter().map(|s| s.as_bytes()), n);
        assert!(lp(&["1.1 edge1 (shmproxy)"], "edge1"));
        assert!(lp(&["1.1 EDGE1 (shmproxy)"], "edge1"));
        assert!(lp(&["1.0 other, 1.1 edge1 (shmproxy)"], "edge1"));
        assert!(lp(&["1.1 other", "HTTP/1.1 edge1"], "edge1"));
        assert!(lp(&[" 1.1   edge1"], "edge1"));
        assert!(!lp(&["1.1 edge10 (shmproxy)"], "edge1"));
        assert!(!lp(&["1.1 shield (edge1)"], "edge1"));
        assert!(!lp(&["edge1"], "edge1"), "a lone word is the protocol");
        assert!(!lp(&[], "edge1"));
        assert!(!lp(&[""], "edge1"));
    }

    #[test]
    fn names_and_members() {
        assert!(valid("edge-1.example"));
        assert!(!valid(""));
        assert!(!valid("a b"));
        assert!(!valid("a,b"));
        assert!(!valid(&"a".repeat(65)));
        assert!(valid(&default_name()));
        assert_eq!(via(11, "n1"), "1.1 n1 (shmproxy)");
        assert_eq!(via(10, "n1"), "1.0 n1 (shmproxy)");
        assert_eq!(cache_name("n1"), "shmproxy-n1");
        assert!(loop_detected([via(11, "n1").as_bytes()], "n1"));
    }
}

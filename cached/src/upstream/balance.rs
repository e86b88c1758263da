//! Which server of a site takes a request: among the live servers (all of them when none
//! is live), by the site's rule. `uri-hash` is rendezvous hashing (highest random weight):
//! each key goes to the server with the highest hash of (server, key), so taking a server
//! out moves only the keys it had, and every `cached` agrees without shared state.

use super::SiteUp;
use common::config::Balance;
use std::sync::atomic::Ordering;

impl SiteUp {
    /// The server for `key`, never `exclude` unless it is the only one.
    pub(super) fn pick(&self, key: &str, exclude: Option<usize>) -> usize {
        let n = self.servers.len();
        if n == 1 {
            return 0;
        }
        let allowed = |i: usize| Some(i) != exclude;
        let live = |i: usize| allowed(i) && self.servers[i].is_up();
        let any_live = (0..n).any(live);
        let candidate = |i: usize| if any_live { live(i) } else { allowed(i) };
        match self.site.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| candidate(i))
                    .unwrap_or(0)
            }
            Balance::LeastConnections => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| candidate(i))
                    .min_by_key(|&i| self.servers[i].in_flight.load(Ordering::Relaxed))
                    .unwrap_or(0)
            }
            Balance::UriHash => (0..n)
                .filter(|&i| candidate(i))
                .max_by_key(|&i| weight(&self.servers[i].url, key))
                .unwrap_or(0),
        }
    }
}

/// A stable 64-bit hash of (server, key): FNV-1a over both, then a 64-bit finaliser
/// (splitmix64) so that similar keys spread.
fn weight(server: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(servers: &[&str], key: &str) -> usize {
        (0..servers.len())
            .max_by_key(|&i| weight(servers[i], key))
            .unwrap()
    }

    #[test]
    fn rendezvous_moves_only_the_removed_servers_keys() {
        let three = ["http://a:80", "http://b:80", "http://c:80"];
        let two = ["http://a:80", "http://c:80"];
        let mut per = [0usize; 3];
        for k in 0..3000 {
            let key = format!("http://site/obj/{k}");
            let before = owner(&three, &key);
            per[before] += 1;
            let after = two[owner(&two, &key)];
            if three[before] != "http://b:80" {
                assert_eq!(after, three[before], "{key} moved though its server stayed");
            }
        }
        for n in per {
            assert!((800..1200).contains(&n), "uneven spread {per:?}");
        }
    }
}

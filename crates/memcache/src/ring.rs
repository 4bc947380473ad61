//! Which server owns a key: a copy of nginx's `hash $memcached_key consistent` continuum
//! (ngx_http_upstream_hash_module.c), so nginx finds every key where memfis wrote it.
//! The rule: CRC-32 points, 160 per unit of weight over `host\0port` + the previous point,
//! looked up with the CRC-32 of the unescaped key. Written by hand because the only crate with this algorithm
//! (pingora-ketama) takes socket addresses, not the server text nginx hashes.

/// Points per unit of weight, as in nginx.
const POINTS_PER_SERVER: usize = 160;

#[derive(Debug, Clone)]
pub struct Ring {
    /// (hash, server index), sorted by hash, first of equal hashes kept.
    points: Vec<(u32, usize)>,
}

/// Splits `host:port` as nginx does: scan back over digits; at ':' split, else no port.
fn split_host_port(server: &str) -> (&[u8], &[u8]) {
    if let Some(rest) = server.strip_prefix("unix:") {
        return (rest.as_bytes(), b"");
    }
    let bytes = server.as_bytes();
    let mut i = bytes.len();
    while i > 0 && bytes[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i > 0 && bytes[i - 1] == b':' {
        (&bytes[..i - 1], &bytes[i..])
    } else {
        (bytes, b"")
    }
}

/// Names a list of servers, in any order: `pool=` and the CRC-32 of the sorted list, in hex.
/// Two clients with the same name place every key alike; a mount writes it in its liveness
/// key, so that a refill can tell a mount still running with another list.
pub fn pool_id<S: AsRef<str>>(servers: &[S]) -> String {
    let mut sorted: Vec<&str> = servers.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    format!("pool={:08x}", crc32fast::hash(sorted.join("\n").as_bytes()))
}

impl Ring {
    /// Builds the continuum for servers (all weight 1), addressed exactly as in nginx's upstream.
    pub fn new<S: AsRef<str>>(servers: &[S]) -> Ring {
        let mut points = Vec::with_capacity(servers.len() * POINTS_PER_SERVER);
        for (index, server) in servers.iter().enumerate() {
            let (host, port) = split_host_port(server.as_ref());
            let mut base = crc32fast::Hasher::new();
            base.update(host);
            base.update(&[0]);
            base.update(port);
            let mut prev: u32 = 0;
            for _ in 0..POINTS_PER_SERVER {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push((hash, index));
                prev = hash;
            }
        }
        points.sort_by_key(|p| p.0); // stable: the first of equal hashes stays first
        points.dedup_by_key(|p| p.0);
        Ring { points }
    }

    /// Index of the server owning `key` (the unescaped key, as nginx hashes it).
    pub fn server_for(&self, key: &[u8]) -> usize {
        let hash = crc32fast::hash(key);
        let i = self.points.partition_point(|p| p.0 < hash);
        self.points[i % self.points.len()].1
    }

    /// The first `n` distinct servers met clockwise from `key`'s point, the owner first: the
    /// order in which nginx retries a request (`memcached_next_upstream`). Fewer when the
    /// ring has fewer servers.
    pub fn servers_for(&self, key: &[u8], n: usize) -> Vec<usize> {
        let hash = crc32fast::hash(key);
        let start = self.points.partition_point(|p| p.0 < hash);
        let mut out = Vec::with_capacity(n);
        for step in 0..self.points.len() {
            let server = self.points[(start + step) % self.points.len()].1;
            if !out.contains(&server) {
                out.push(server);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_nginx() {
        assert_eq!(
            split_host_port("127.0.0.1:11211"),
            (&b"127.0.0.1"[..], &b"11211"[..])
        );
        assert_eq!(split_host_port("cache"), (&b"cache"[..], &b""[..]));
        assert_eq!(
            split_host_port("[::1]:11211"),
            (&b"[::1]"[..], &b"11211"[..])
        );
        assert_eq!(
            split_host_port("unix:/run/mc.sock"),
            (&b"/run/mc.sock"[..], &b""[..])
        );
    }

    #[test]
    fn crc32_is_zlib_crc32() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn spreads_keys_and_is_stable() {
        let ring = Ring::new(&["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"]);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[ring.server_for(format!("memfis://h/f{i}").as_bytes())] += 1;
        }
        assert!(counts.iter().all(|&c| c > 600), "{counts:?}");
        let again = Ring::new(&["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"]);
        assert_eq!(ring.server_for(b"x"), again.server_for(b"x"));
    }

    #[test]
    fn a_pool_is_named_by_its_servers_in_any_order() {
        let a = pool_id(&["127.0.0.1:11211", "127.0.0.1:11212"]);
        assert_eq!(a, pool_id(&["127.0.0.1:11212", "127.0.0.1:11211"]));
        assert_ne!(
            a,
            pool_id(&["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"])
        );
        assert!(a.starts_with("pool=") && a.len() == 13, "{a}");
    }

    #[test]
    fn replicas_are_the_next_distinct_servers_clockwise() {
        let ring = Ring::new(&["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213"]);
        for i in 0..500 {
            let key = format!("memfis://h/f{i}");
            let hash = crc32fast::hash(key.as_bytes());
            let copies = ring.servers_for(key.as_bytes(), 2);
            assert_eq!(copies[0], ring.server_for(key.as_bytes()));
            assert_eq!(copies.len(), 2);
            assert_ne!(copies[0], copies[1]);
            // The second copy owns the first point past the key's whose server is not the first.
            let len = ring.points.len();
            let start = ring.points.iter().position(|p| p.0 >= hash).unwrap_or(len);
            let second = (start..start + len)
                .map(|i| ring.points[i % len].1)
                .find(|&s| s != copies[0])
                .unwrap();
            assert_eq!(copies[1], second, "{key}");
        }
        assert_eq!(ring.servers_for(b"x", 5).len(), 3);
    }
}

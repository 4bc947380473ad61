//! Several mounts of one prefix at once: no update is lost.

mod common;

use common::*;

#[test]
fn two_mounts_each_create_500_files_in_one_directory() {
    let mc = Memcached::start();
    let a = Mount::new(&[mc.addr()], "memfis://shared");
    let b = Mount::new(&[mc.addr()], "memfis://shared");
    std::fs::create_dir(a.p("d")).unwrap();
    std::thread::scope(|s| {
        for (m, tag) in [(&a, "a"), (&b, "b")] {
            s.spawn(move || {
                let dir = m.p("d");
                // The directory made by the other mount may need its entry TTL to pass.
                for _ in 0..100 {
                    if dir.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                for i in 0..500 {
                    std::fs::write(dir.join(format!("{tag}{i}")), format!("{tag}{i}")).unwrap();
                }
            });
        }
    });
    for m in [&a, &b] {
        let names = std::fs::read_dir(m.p("d")).unwrap().count();
        assert_eq!(names, 1000);
    }
    assert_eq!(std::fs::read(b.p("d/a499")).unwrap(), b"a499");
    assert_eq!(mc.get(b"memfis://shared/d/b0").unwrap(), b"b0");
}

#[test]
fn a_pool_of_servers_places_keys_where_nginx_looks() {
    let pool: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let servers: Vec<String> = pool.iter().map(|m| m.addr()).collect();
    let m = Mount::new(&servers, "memfis://pool");
    for i in 0..60 {
        std::fs::write(m.p(&format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    let upstream: String = servers.iter().map(|s| format!("server {s};")).collect();
    let nginx = Nginx::start(
        &format!("upstream mc {{ hash $memcached_key consistent; {upstream} keepalive 8; }}"),
        "location / { set $memcached_key \"memfis://pool$uri\"; memcached_pass mc; }",
    );
    let mut per_server = [0; 3];
    for i in 0..60 {
        let (status, _, body) = nginx.get(&format!("/f{i}.txt"));
        assert_eq!(status, 200, "f{i}");
        assert_eq!(body, format!("file {i}").as_bytes());
        let key = format!("memfis://pool/f{i}.txt");
        let holders: Vec<usize> = (0..3)
            .filter(|&s| pool[s].get(key.as_bytes()).is_some())
            .collect();
        assert_eq!(holders.len(), 1);
        per_server[holders[0]] += 1;
    }
    assert!(per_server.iter().all(|&n| n > 0), "{per_server:?}");
}

#[test]
fn works_through_twemproxy() {
    let mc = Memcached::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("nutcracker.yml");
    std::fs::write(
        &conf,
        format!(
            "memfis:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  \
             timeout: 2000\n  servers:\n   - {}:1\n",
            mc.addr()
        ),
    )
    .unwrap();
    let _proxy = ChildGuard(
        std::process::Command::new("nutcracker")
            .arg("-c")
            .arg(&conf)
            .arg("-o")
            .arg(dir.path().join("nutcracker.log"))
            .spawn()
            .expect("nutcracker installed (apt-get install nutcracker)"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nutcracker did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let proxy_addr = format!("127.0.0.1:{port}");
    {
        let m = Mount::new(std::slice::from_ref(&proxy_addr), "memfis://tw");
        std::fs::create_dir(m.p("d")).unwrap();
        std::fs::write(m.p("d/a.html"), b"through the proxy").unwrap();
        std::fs::rename(m.p("d"), m.p("e")).unwrap();
        assert_eq!(
            std::fs::read(m.p("e/a.html")).unwrap(),
            b"through the proxy"
        );
        let nginx = Nginx::start(
            "",
            &format!(
                "location / {{ set $memcached_key \"memfis://tw$uri\"; memcached_pass {proxy_addr}; }}"
            ),
        );
        assert_eq!(nginx.get("/e/a.html").2, b"through the proxy");
        assert_eq!(nginx.get("/d/a.html").0, 404);
    }
}

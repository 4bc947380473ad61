//! The generated nginx config, run by real nginx: store first, then the disk root, then 404;
//! a stopped memcached is caught too.

mod common;

use std::process::Command;

use common::*;

const PREFIX: &str = "memfis://web";

#[test]
fn every_generated_variant_passes_nginx_t() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().to_str().unwrap();
    let variants: Vec<Vec<&str>> = vec![
        vec![],
        vec![
            "--server",
            "127.0.0.1:11211",
            "--server",
            "127.0.0.1:11212",
            "--server",
            "cache:11213",
        ],
        vec!["--root", root],
        vec!["--php-fpm", "127.0.0.1:9000"],
        vec![
            "--root",
            root,
            "--php-fpm",
            "unix:/run/php/php-fpm.sock",
            "--php-script",
            "/srv/app/index.php",
        ],
        vec!["--listen", "127.0.0.1:8081", "--root", root],
        vec![
            "--server-name",
            "www.example.com,example.com",
            "--default-server",
            "--name",
            "shop",
            "--script-ext",
            "phtml",
        ],
    ];
    for v in variants {
        let mut args = vec!["--prefix", PREFIX];
        if !v.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:8080"]);
        }
        args.extend(v.iter());
        let config = nginx_config(&args);
        // `nginx -t` resolves upstream host names: keep the test offline.
        let config = config.replace("server cache:11213;", "server 127.0.0.1:11213;");
        if let Err(e) = Nginx::test_config(&config) {
            panic!("nginx -t failed for {args:?}: {e}\n{config}");
        }
    }
}

#[test]
fn bad_prefix_is_refused() {
    for bad in ["has space", "a%b", "memfis://$host"] {
        let out = Command::new(BIN)
            .args(["nginx-config", "--prefix", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("prefix"),
            "{bad}"
        );
    }
}

#[test]
fn store_then_root_then_404_and_a_dead_store_falls_back() {
    let mut mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    let root = tempfile::tempdir().unwrap();
    std::fs::write(mount.p("both.html"), b"from store").unwrap();
    std::fs::create_dir(mount.p("docs")).unwrap();
    std::fs::write(mount.p("docs/index.html"), b"docs index").unwrap();
    std::fs::write(mount.p("big.bin"), vec![9u8; 100_000]).unwrap();
    std::fs::write(root.path().join("both.html"), b"from disk").unwrap();
    std::fs::write(root.path().join("disk-only.css"), b"body{}").unwrap();
    std::fs::create_dir(root.path().join("docs")).unwrap();
    std::fs::write(root.path().join("docs/index.html"), b"disk docs").unwrap();
    let port = free_port();
    let config = nginx_config(&[
        "--server",
        &mc.addr(),
        "--prefix",
        PREFIX,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--root",
        root.path().to_str().unwrap(),
    ]);
    let nginx = Nginx::start_http(port, &config);

    let (status, headers, body) = nginx.get("/both.html");
    assert_eq!((status, body.as_slice()), (200, &b"from store"[..]));
    assert_eq!(header(&headers, "x-memfis-source"), Some("store"));
    assert_eq!(header(&headers, "content-type"), Some("text/html"));

    let (status, headers, body) = nginx.get("/docs/");
    assert_eq!((status, body.as_slice()), (200, &b"docs index"[..]));
    assert_eq!(header(&headers, "content-type"), Some("text/html"));

    let (status, headers, body) = nginx.get("/disk-only.css");
    assert_eq!((status, body.as_slice()), (200, &b"body{}"[..]));
    assert_eq!(header(&headers, "x-memfis-source"), Some("root"));
    assert_eq!(header(&headers, "content-type"), Some("text/css"));

    assert_eq!(nginx.get("/nowhere.html").0, 404);

    let (status, headers, body) = nginx.request("HEAD", "/both.html", &[]);
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(header(&headers, "content-length"), Some("10"));
    let (status, _, body) = nginx.request("GET", "/big.bin", &[("Range", "bytes=99990-")]);
    assert_eq!((status, body.len()), (206, 10));

    // The store goes away: disk answers (502 caught), and a miss everywhere is still 404.
    drop(mount);
    mc.stop();
    let (status, headers, body) = nginx.get("/both.html");
    assert_eq!((status, body.as_slice()), (200, &b"from disk"[..]));
    assert_eq!(header(&headers, "x-memfis-source"), Some("root"));
    assert_eq!(nginx.get("/nowhere.html").0, 404);
    // A directory on disk asked for without its slash: a redirect, as nginx static answers
    // (its index under /docs would break relative links); with the slash, its index.
    let (status, headers, _) = nginx.get("/docs?x=1");
    assert_eq!(status, 301);
    assert!(
        header(&headers, "location").is_some_and(|l| l.ends_with("/docs/?x=1")),
        "{headers:?}"
    );
    let (status, _, body) = nginx.get("/docs/");
    assert_eq!((status, body.as_slice()), (200, &b"disk docs"[..]));
}

/// Serves `files` (path, bytes) from the store of a fresh mount through a generated config.
fn serve_store(files: &[(&str, &[u8])], extra: &[&str]) -> (Memcached, Mount, Nginx) {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    for (path, bytes) in files {
        let full = mount.p(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, bytes).unwrap();
    }
    let nginx = Nginx::for_store(&mc.addr(), PREFIX, extra);
    (mc, mount, nginx)
}

#[test]
fn hidden_paths_and_script_sources_are_never_served() {
    let secret = b"<?php $db_password = 'hunter2';";
    let files: &[(&str, &[u8])] = &[
        ("config.php", secret),
        ("lib/Tool.PHP", secret),
        ("page.phtml", secret),
        ("Page.PHTML", secret),
        ("old.php3", secret),
        ("v5.php5", secret),
        ("v7.Php7", secret),
        ("v8.php8", secret),
        ("tpl.pht", secret),
        ("app.phar", secret),
        ("show.phps", secret),
        ("lib/db.inc", secret),
        ("lib/Db.INC", secret),
        ("notes.inc.html", b"fine"),
        ("php5.txt", b"fine"),
        // Backup copies: an editor's, a deploy's.
        ("config.php~", secret),
        ("config.php.bak", secret),
        ("Config.PHP.Old", secret),
        ("wp-config.php.save", secret),
        ("settings.php.dist", secret),
        ("v7.php7.orig", secret),
        ("page.phtml.tmp", secret),
        ("app.phar.swp", secret),
        ("lib/db.inc~", secret),
        ("lib/db.INC.BAK", secret),
        ("tpl.pht.old", secret),
        ("show.phps.bak", secret),
        ("config.php.swo", secret),
        ("config.php.bak~", secret),
        ("j.php.backup", secret),
        ("k.php.1", secret),
        ("i.php_", secret),
        ("q.php.", secret),
        ("#config.php#", secret),
        (".env", b"DB_PASSWORD=hunter2"),
        (".git/config", b"[core] hunter2"),
        ("app/.htpasswd", b"admin:hunter2"),
        (".well-known/security.txt", b"Contact: ops@example.com"),
        ("index.html", b"home"),
    ];
    // No --script-ext: the common PHP source extensions are refused by default, in any case.
    let (_mc, _mount, nginx) = serve_store(files, &[]);
    for path in [
        "/config.php",
        "/lib/Tool.PHP",
        "/page.phtml",
        "/Page.PHTML",
        "/old.php3",
        "/v5.php5",
        "/v7.Php7",
        "/v8.php8",
        "/tpl.pht",
        "/app.phar",
        "/show.phps",
        "/lib/db.inc",
        "/lib/Db.INC",
        "/lib/db%2einc",
        "/config.php~",
        "/config.php.bak",
        "/Config.PHP.Old",
        "/wp-config.php.save",
        "/settings.php.dist",
        "/v7.php7.orig",
        "/page.phtml.tmp",
        "/app.phar.swp",
        "/lib/db.inc~",
        "/lib/db.INC.BAK",
        "/tpl.pht.old",
        "/show.phps.bak",
        "/config.php.swo",
        "/config.php.bak~",
        "/j.php.backup",
        "/k.php.1",
        "/i.php_",
        "/q.php.",
        "/%23config.php%23",
        "/.env",
        "/.git/config",
        "/app/.htpasswd",
        "/%2eenv",
        "/.well-known/../.env",
    ] {
        let (status, _, body) = nginx.get(path);
        assert_eq!(status, 403, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("hunter2"),
            "{path} leaked its source"
        );
    }
    let (status, _, body) = nginx.get("/.well-known/security.txt");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"Contact: ops@example.com"[..])
    );
    assert_eq!(nginx.get("/index.html").0, 200);
    // Only the extension counts.
    for path in ["/notes.inc.html", "/php5.txt"] {
        let (status, _, body) = nginx.get(path);
        assert_eq!((status, body.as_slice()), (200, &b"fine"[..]), "{path}");
    }
}

#[test]
fn a_directory_without_its_slash_is_redirected() {
    let files: &[(&str, &[u8])] = &[
        ("docs/index.html", b"docs index"),
        ("docs/guide.html", b"guide"),
        ("empty/.keep", b""),
    ];
    let (_mc, _mount, nginx) = serve_store(files, &[]);
    let (status, headers, _) = nginx.get("/docs");
    assert_eq!(status, 301);
    assert_eq!(header(&headers, "location"), Some("/docs/"));
    let (status, headers, _) = nginx.get("/docs?page=2");
    assert_eq!(status, 301);
    assert_eq!(header(&headers, "location"), Some("/docs/?page=2"));
    // Never off-site: leading slashes and backslashes collapse to one.
    for path in [
        "//docs",
        "//evil.example/../docs",
        "/\\evil.example/../docs",
    ] {
        let (status, headers, _) = nginx.get(path);
        assert_eq!(status, 301, "{path}");
        let location = header(&headers, "location").unwrap();
        assert!(
            location.starts_with('/') && !location.starts_with("//") && !location.contains('\\'),
            "{path} -> {location}"
        );
    }
    assert_eq!(nginx.get("/docs/").2, b"docs index");
    assert_eq!(nginx.get("/docs/guide.html").2, b"guide");
    // Neither a file nor a directory with an index: 404, no redirect.
    assert_eq!(nginx.get("/nothing").0, 404);
    assert_eq!(nginx.get("/empty").0, 404);
}

/// A directory whose name holds CR LF must not let a request split the redirect's headers.
#[test]
fn a_directory_redirect_cannot_inject_headers() {
    let files: &[(&str, &[u8])] = &[("evil\r\nSet-Cookie: pwn=2/index.html", b"x")];
    let (_mc, _mount, nginx) = serve_store(files, &[]);
    let (status, headers, _) = nginx.get("/evil%0d%0aSet-Cookie:%20pwn=2?a=1");
    assert_eq!(status, 301, "{headers:?}");
    assert_eq!(header(&headers, "set-cookie"), None, "{headers:?}");
    assert_eq!(
        header(&headers, "location"),
        Some("/evil%0d%0aSet-Cookie:%20pwn=2/?a=1")
    );
}

/// A copy of Debian's stock /etc/nginx (sites-enabled/default kept, moved to `port`), run from
/// a temp directory; `sites` are (file name, config) dropped into its conf.d/.
struct StockNginx {
    _child: ChildGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl StockNginx {
    fn start(port: u16, sites: &[(&str, String)]) -> StockNginx {
        // A missing layout fails the test: it must never pass without running.
        assert!(
            std::path::Path::new("/etc/nginx/sites-enabled/default").exists(),
            "no Debian /etc/nginx layout here (apt-get install nginx-light)"
        );
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("nginx");
        sh(&format!("cp -a /etc/nginx {}", etc.display()));
        let etc_s = etc.display().to_string();
        let logs = dir.path().display().to_string();
        let conf = std::fs::read_to_string(etc.join("nginx.conf"))
            .unwrap()
            .replace("/etc/nginx", &etc_s)
            .replace("/run/nginx.pid", &format!("{logs}/nginx.pid"))
            .replace("/var/log/nginx", &logs);
        std::fs::write(etc.join("nginx.conf"), conf).unwrap();
        // The stock default site, kept, on the test's port.
        let default = etc.join("sites-enabled/default");
        let site = std::fs::read_to_string(&default)
            .unwrap()
            .replace(
                "listen 80 default_server;",
                &format!("listen 127.0.0.1:{port} default_server;"),
            )
            .replace("listen [::]:80 default_server;", "");
        std::fs::remove_file(&default).unwrap(); // a symlink into sites-available
        std::fs::write(&default, site).unwrap();
        for (name, config) in sites {
            std::fs::write(etc.join("conf.d").join(name), config).unwrap();
        }
        let test = Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(etc.join("nginx.conf"))
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&test.stderr).to_string();
        assert!(test.status.success(), "{warnings}");
        assert!(!warnings.contains("conflicting server name"), "{warnings}");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(etc.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = ChildGuard(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        StockNginx {
            _child: child,
            port,
            _dir: dir,
        }
    }

    fn get(&self, host: &str, path: &str) -> (u16, Vec<u8>) {
        let (status, _, body) = http_request(self.port, "GET", path, &[("Host", host)]);
        (status, body)
    }
}

#[test]
fn two_sites_beside_debians_default_site_each_serve_their_own_tree() {
    let mc = Memcached::start();
    let shop = Mount::new(&[mc.addr()], "memfis://shop.test");
    let blog = Mount::new(&[mc.addr()], "memfis://blog.test");
    std::fs::write(shop.p("index.html"), b"shop home").unwrap();
    std::fs::write(blog.p("index.html"), b"blog home").unwrap();
    std::fs::create_dir(blog.p("posts")).unwrap();
    std::fs::write(blog.p("posts/index.html"), b"all posts").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let site = |prefix: &str, name: &str| {
        nginx_config(&[
            "--server",
            &mc.addr(),
            "--prefix",
            prefix,
            "--listen",
            &listen,
            "--server-name",
            name,
        ])
    };
    let sites = [
        ("shop.conf", site("memfis://shop.test", "shop.test")),
        ("blog.conf", site("memfis://blog.test", "blog.test")),
    ];
    let nginx = StockNginx::start(port, &sites);
    assert_eq!(nginx.get("shop.test", "/"), (200, b"shop home".to_vec()));
    assert_eq!(nginx.get("blog.test", "/"), (200, b"blog home".to_vec()));
    assert_eq!(nginx.get("blog.test", "/posts/").1, b"all posts");
    assert_eq!(nginx.get("blog.test", "/posts").0, 301);
    assert_eq!(nginx.get("shop.test", "/posts/").0, 404);
    // Any other name still goes to Debian's default site, not to a store.
    let (_, other) = nginx.get("unknown.test", "/");
    assert_ne!(other, b"shop home");
    assert_ne!(other, b"blog home");
}

/// A snippet inside an existing server keeps that server's own headers (HSTS, CSP) on every
/// store response, redirect and miss when given them with --headers: a location with any
/// add_header of its own inherits none from the server.
#[test]
fn a_snippet_keeps_the_servers_own_headers() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    std::fs::create_dir(mount.p("docs")).unwrap();
    std::fs::write(mount.p("docs/index.html"), b"docs").unwrap();
    std::fs::write(mount.p("a.css"), b"body{}").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("site-headers.conf");
    std::fs::write(
        &headers,
        "add_header Strict-Transport-Security \"max-age=63072000\" always;\n\
         add_header Content-Security-Policy \"default-src 'self'\" always;\n",
    )
    .unwrap();
    let headers = headers.to_string_lossy().into_owned();
    // The site's tree on disk is the fallback, whatever root the server has.
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("disk.txt"), b"from disk").unwrap();
    let site = site.to_string_lossy().into_owned();
    let snippet = dir.path().join("memfis-snippet.conf");
    let store = ["--server", &mc.addr(), "--prefix", PREFIX];
    let args = ["--snippet", "--headers", &headers, "--root", &site];
    std::fs::write(&snippet, nginx_config(&[&store[..], &args[..]].concat())).unwrap();
    let upstream = nginx_config(&[&store[..], &["--upstream"]].concat());
    let port = free_port();
    let http = format!(
        "{upstream}\nserver {{\n    listen 127.0.0.1:{port};\n    root /nonexistent;\n    include {headers};\n    \
         include {};\n}}\n",
        snippet.display()
    );
    let nginx = Nginx::start_http(port, &http);
    let (status, h, body) = nginx.get("/disk.txt");
    assert_eq!((status, body.as_slice()), (200, &b"from disk"[..]));
    assert_eq!(header(&h, "x-memfis-source"), Some("root"));
    for (path, status) in [
        ("/a.css", 200),
        ("/docs/", 200),
        ("/docs", 301),
        ("/none", 404),
    ] {
        let (got, h, _) = nginx.get(path);
        assert_eq!(got, status, "{path}");
        assert_eq!(
            header(&h, "strict-transport-security"),
            Some("max-age=63072000"),
            "{path}: {h:?}"
        );
        assert!(
            header(&h, "content-security-policy").is_some(),
            "{path}: {h:?}"
        );
    }
}

/// `--expires` gives store (and root) responses a lifetime by content type, since the store
/// sends no validators.
#[test]
fn expires_by_content_type() {
    let files: &[(&str, &[u8])] = &[
        ("page.html", b"<p>x"),
        ("logo.png", b"\x89PNG"),
        ("site.css", b"body{}"),
        ("docs/index.html", b"docs"),
    ];
    let args = [
        "--expires",
        "text/html=5m",
        "--expires",
        "image/*=30d",
        "--expires",
        "default=1h",
    ];
    let (_mc, _mount, nginx) = serve_store(files, &args);
    for (path, max_age) in [
        ("/page.html", "300"),
        ("/docs/", "300"),
        ("/logo.png", "2592000"),
        ("/site.css", "3600"),
    ] {
        let (status, h, _) = nginx.get(path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&h, "cache-control"),
            Some(format!("max-age={max_age}").as_str()),
            "{path}: {h:?}"
        );
        assert!(header(&h, "expires").is_some(), "{path}: {h:?}");
    }
}

/// The layout of Debian's /etc/nginx, built in a scratch directory: `nginx.conf` including
/// `conf.d/*.conf` and `sites-enabled/*`, the stock default site (its own `location /`)
/// enabled through a symlink, and a site of the user's own in `sites-available/www` with its
/// own root and headers (HSTS, CSP, kept in a snippet as docs/serving.md says) that includes
/// the generated `--snippet --root --headers`; the upstream goes in `conf.d`. `nginx -t`
/// passes without a warning, both sites answer, every answer of the user's site (store,
/// directory redirect, disk fallback, 404) carries its headers, and a file the store lacks
/// comes from the site's root.
#[test]
fn a_debian_layout_with_the_default_site_and_a_site_of_the_users_own() {
    let mc = Memcached::start();
    let mount = Mount::new(&[mc.addr()], PREFIX);
    std::fs::write(mount.p("index.html"), b"store home").unwrap();
    std::fs::write(mount.p("a.css"), b"body{}").unwrap();
    std::fs::create_dir(mount.p("docs")).unwrap();
    std::fs::write(mount.p("docs/index.html"), b"store docs").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().display().to_string();
    let etc = dir.path().join("etc-nginx");
    let etc_s = etc.display().to_string();
    for sub in [
        "conf.d",
        "sites-available",
        "sites-enabled",
        "snippets",
        "modules-enabled",
    ] {
        std::fs::create_dir_all(etc.join(sub)).unwrap();
    }
    // mime.types is a plain file of nginx's package: read, not followed.
    std::fs::write(
        etc.join("mime.types"),
        std::fs::read("/etc/nginx/mime.types").expect("nginx installed (nginx-common)"),
    )
    .unwrap();
    let (default_port, www_port) = (free_port(), free_port());
    // Debian's nginx.conf, its paths moved into the scratch directory.
    std::fs::write(
        etc.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {scratch}/nginx.pid;\nerror_log {scratch}/error.log;\n\
             include {etc_s}/modules-enabled/*.conf;\n\
             events {{\n\tworker_connections 768;\n}}\n\
             http {{\n\tsendfile on;\n\ttcp_nopush on;\n\ttypes_hash_max_size 2048;\n\
             \tinclude {etc_s}/mime.types;\n\tdefault_type application/octet-stream;\n\
             \tssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;\n\tssl_prefer_server_ciphers on;\n\
             \taccess_log {scratch}/access.log;\n\tgzip on;\n\
             \tclient_body_temp_path {scratch}/body;\n\tproxy_temp_path {scratch}/proxy;\n\
             \tfastcgi_temp_path {scratch}/fastcgi;\n\tuwsgi_temp_path {scratch}/uwsgi;\n\
             \tscgi_temp_path {scratch}/scgi;\n\
             \tinclude {etc_s}/conf.d/*.conf;\n\tinclude {etc_s}/sites-enabled/*;\n}}\n"
        ),
    )
    .unwrap();
    // The stock default site, as Debian ships it (on a loopback port of the test's).
    let html = dir.path().join("var-www-html");
    std::fs::create_dir(&html).unwrap();
    std::fs::write(html.join("index.nginx-debian.html"), b"Welcome to nginx!").unwrap();
    std::fs::write(
        etc.join("sites-available/default"),
        format!(
            "server {{\n\tlisten 127.0.0.1:{default_port} default_server;\n\n\troot {};\n\n\
             \tindex index.html index.htm index.nginx-debian.html;\n\n\tserver_name _;\n\n\
             \tlocation / {{\n\t\ttry_files $uri $uri/ =404;\n\t}}\n}}\n",
            html.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../sites-available/default",
        etc.join("sites-enabled/default"),
    )
    .unwrap();

    // The user's site: its own root on disk, its own headers.
    let www = dir.path().join("srv-www");
    std::fs::create_dir_all(www.join("docs")).unwrap();
    std::fs::write(www.join("index.html"), b"disk home").unwrap();
    std::fs::write(www.join("disk.txt"), b"from disk").unwrap();
    std::fs::write(www.join("docs/only-on-disk.html"), b"disk docs page").unwrap();
    let www_s = www.display().to_string();
    let headers = etc.join("snippets/site-headers.conf");
    std::fs::write(
        &headers,
        "add_header Strict-Transport-Security \"max-age=63072000; includeSubDomains\" always;\n\
         add_header Content-Security-Policy \"default-src 'self'\" always;\n",
    )
    .unwrap();
    let headers_s = headers.display().to_string();
    let store = ["--server", &mc.addr(), "--prefix", PREFIX];
    std::fs::write(
        etc.join("conf.d/memfis-www-upstream.conf"),
        nginx_config(&[&store[..], &["--upstream"]].concat()),
    )
    .unwrap();
    let snippet_args = ["--snippet", "--root", &www_s, "--headers", &headers_s];
    std::fs::write(
        etc.join("snippets/memfis-www.conf"),
        nginx_config(&[&store[..], &snippet_args[..]].concat()),
    )
    .unwrap();
    std::fs::write(
        etc.join("sites-available/www"),
        format!(
            "server {{\n\tlisten 127.0.0.1:{www_port};\n\tserver_name www.test;\n\
             \troot {www_s};\n\tindex index.html;\n\
             \tinclude {etc_s}/snippets/site-headers.conf;\n\
             \tinclude {etc_s}/snippets/memfis-www.conf;\n}}\n"
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink("../sites-available/www", etc.join("sites-enabled/www")).unwrap();

    let conf = etc.join("nginx.conf");
    let test = Command::new("nginx")
        .args(["-t", "-p", &scratch, "-c"])
        .arg(&conf)
        .output()
        .expect("nginx installed (apt-get install nginx-light)");
    let said = String::from_utf8_lossy(&test.stderr).into_owned();
    assert!(test.status.success(), "nginx -t: {said}");
    assert!(
        !said.contains("[warn]") && !said.contains("[emerg]"),
        "{said}"
    );
    let child = Command::new("nginx")
        .args(["-p", &scratch, "-c"])
        .arg(&conf)
        .args(["-g", "daemon off; master_process off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _nginx = ChildGuard(child);
    for port in [default_port, www_port] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    // The stock default site still answers with its own location / and root.
    let (status, _, body) = http_request(default_port, "GET", "/", &[]);
    assert_eq!((status, body.as_slice()), (200, &b"Welcome to nginx!"[..]));
    assert_eq!(http_request(default_port, "GET", "/a.css", &[]).0, 404);

    let get = |path: &str| http_request(www_port, "GET", path, &[("Host", "www.test")]);
    let cases: [(&str, u16, &[u8], &str); 7] = [
        ("/", 200, b"store home", "store"),
        ("/a.css", 200, b"body{}", "store"),
        ("/docs/", 200, b"store docs", "store"),
        ("/docs", 301, b"", ""),
        ("/disk.txt", 200, b"from disk", "root"),
        ("/docs/only-on-disk.html", 200, b"disk docs page", "root"),
        ("/none.html", 404, b"", ""),
    ];
    for (path, status, body, source) in cases {
        let (got, h, got_body) = get(path);
        assert_eq!(got, status, "{path}: {h:?}");
        if status == 200 {
            assert_eq!(got_body, body, "{path}");
        }
        if !source.is_empty() {
            assert_eq!(header(&h, "x-memfis-source"), Some(source), "{path}: {h:?}");
        }
        if status == 301 {
            assert_eq!(header(&h, "location"), Some("/docs/"), "{h:?}");
        }
        assert_eq!(
            header(&h, "strict-transport-security"),
            Some("max-age=63072000; includeSubDomains"),
            "{path}: {h:?}"
        );
        assert_eq!(
            header(&h, "content-security-policy"),
            Some("default-src 'self'"),
            "{path}: {h:?}"
        );
    }
    // The store's copy wins over the disk's, and the store down falls back to the disk.
    drop(mount);
    let mut mc = mc;
    mc.stop();
    let (status, h, body) = get("/");
    assert_eq!((status, body.as_slice()), (200, &b"disk home"[..]), "{h:?}");
    assert_eq!(header(&h, "x-memfis-source"), Some("root"));
    assert!(header(&h, "strict-transport-security").is_some(), "{h:?}");
}

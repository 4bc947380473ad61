//! Serving config: renders the nginx `upstream` + `server` blocks that serve a memfis store
//! with stock `memcached_pass`, refuse what a static nginx would refuse (hidden paths, script
//! sources), redirect `/dir` to `/dir/`, fall back to a disk root and a PHP backend, and mark
//! each response with where it came from. See docs/serving.md.

use std::fmt::Write;

use anyhow::{Result, bail};

use crate::cli::NginxConfigArgs;

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Part {
    /// `upstream` and `server`, for the http context (e.g. /etc/nginx/conf.d/).
    #[default]
    Site,
    /// The `location`s only, to `include` inside an existing `server {}`.
    Snippet,
    /// The `upstream` only, for the http context (what a snippet needs beside it).
    Upstream,
}

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// memcached servers exactly as memfis hashes them.
    pub servers: Vec<String>,
    pub prefix: String,
    /// Names the upstream and locations of this site: unique per site on one nginx.
    pub name: Option<String>,
    /// `listen` argument: a port or address:port.
    pub listen: String,
    /// `server_name` values; `_` (no name) when empty.
    pub server_names: Vec<String>,
    /// Adds `default_server` to `listen`: this site answers requests no other name claims.
    pub default_server: bool,
    /// Disk directory tried when the store misses or is down.
    pub root: Option<String>,
    /// php-fpm address (host:port or unix:/path) tried last.
    pub php_fpm: Option<String>,
    /// Front controller php-fpm runs for every fallback request.
    pub php_script: Option<String>,
    /// Extensions (beyond `php`) whose files are scripts: never served as bytes.
    pub script_exts: Vec<String>,
    /// File of the enclosing server's `add_header` lines, repeated where locations add their own.
    pub headers: Option<String>,
    /// (content type or `type/*` or `default`, nginx time) pairs for `expires`.
    pub expires: Vec<(String, String)>,
    pub part: Part,
}

impl ServeOptions {
    /// Options for one site with everything else at its default.
    pub fn new(servers: Vec<String>, prefix: String, listen: String) -> ServeOptions {
        ServeOptions {
            servers,
            prefix,
            name: None,
            listen,
            server_names: Vec::new(),
            default_server: false,
            root: None,
            php_fpm: None,
            php_script: None,
            script_exts: Vec::new(),
            expires: Vec::new(),
            headers: None,
            part: Part::Site,
        }
    }

    /// The site's id: `--name`, or the prefix without its scheme, as letters, digits and `_`.
    fn id(&self) -> String {
        let raw = self.name.clone().unwrap_or_else(|| {
            let prefix = &self.prefix;
            prefix
                .split_once("://")
                .map_or(prefix.as_str(), |(_, rest)| rest)
                .to_string()
        });
        let id: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let id = id.trim_matches('_').to_string();
        if id.is_empty() { "site".into() } else { id }
    }

    /// Extensions of scripts, `php` first.
    fn scripts(&self) -> Vec<String> {
        let mut exts = vec!["php".to_string()];
        for e in &self.script_exts {
            let e = e.trim_start_matches('.').to_ascii_lowercase();
            if !exts.contains(&e) {
                exts.push(e);
            }
        }
        exts
    }
}

/// Extensions of PHP sources besides `.php` (matched in any case): files PHP runs or includes,
/// whose bytes hold code and often secrets. Never served, with or without a PHP backend;
/// `--script-ext` one of them to have php-fpm run it instead.
pub const SOURCE_EXTS: &[&str] = &[
    "phtml", "pht", "php3", "php4", "php5", "php6", "php7", "php8", "phar", "phps", "inc",
];

/// Characters that a prefix may not hold inside a quoted nginx string without changing meaning.
const CONFIG_SPECIAL: &[char] = &['$', '"', '\'', '\\', '{', '}', ';', '#'];

fn check(opts: &ServeOptions) -> Result<()> {
    memfis_fs::layout::keys::validate_prefix(&opts.prefix).map_err(anyhow::Error::msg)?;
    if let Some(c) = opts.prefix.chars().find(|c| CONFIG_SPECIAL.contains(c)) {
        bail!(
            "prefix {:?} contains {c:?}, which an nginx config cannot quote as a plain string; \
             pick a prefix without $ \" ' \\ {{ }} ; #",
            opts.prefix
        );
    }
    for s in &opts.servers {
        memfis_memcache::client::validate_server(s).map_err(anyhow::Error::msg)?;
    }
    let plain_server = |s: &str| {
        !s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || CONFIG_SPECIAL.contains(&c))
    };
    if let Some(s) = opts.servers.iter().find(|s| !plain_server(s)) {
        bail!("--server {s:?} cannot go into an nginx config (spaces or special characters)");
    }
    let plain = |what: &str, v: &str| -> Result<()> {
        if v.is_empty()
            || v.chars()
                .any(|c| c.is_whitespace() || CONFIG_SPECIAL.contains(&c))
        {
            bail!(
                "{what} {v:?} cannot go into an nginx config (empty, spaces or special characters)"
            );
        }
        Ok(())
    };
    plain("--listen", &opts.listen)?;
    for (what, value) in [
        ("--root", opts.root.as_ref()),
        ("--php-fpm", opts.php_fpm.as_ref()),
        ("--name", opts.name.as_ref()),
    ] {
        if let Some(v) = value {
            plain(what, v)?;
        }
    }
    for name in &opts.server_names {
        plain("--server-name", name)?;
    }
    if let Some(h) = &opts.headers {
        plain("--headers", h)?;
        // nginx reads an include with these as a pattern: a file name would match nothing.
        if h.contains(['*', '?', '[']) {
            bail!("--headers {h:?}: nginx would read * ? [ as a pattern; rename the file");
        }
    }
    for (kind, time) in &opts.expires {
        let type_ok = kind == "default"
            || kind.split_once('/').is_some_and(|(a, b)| {
                let token = |t: &str| {
                    !t.is_empty()
                        && t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                };
                token(a) && (b == "*" || token(b))
            });
        if !type_ok {
            bail!(
                "--expires {kind}={time}: the type is a content type (text/html), type/* or default"
            );
        }
        if !is_nginx_time(time) {
            bail!(
                "--expires {kind}={time}: the time is nginx's (30s, 5m, 12h, 7d, 1y, max, epoch or off)"
            );
        }
    }
    for ext in &opts.script_exts {
        let ext = ext.trim_start_matches('.');
        if ext.is_empty() || !ext.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("--script-ext {ext:?}: letters and digits only (e.g. phtml)");
        }
    }
    if opts.php_script.is_some() && opts.php_fpm.is_none() {
        bail!("--php-script needs --php-fpm");
    }
    Ok(())
}

/// The names of one site's nginx objects.
struct Names {
    upstream: String,
    fallback: String,
    backend: String,
    dir: String,
    probe: String,
    missing: String,
    /// Variable (set by a `map` beside the upstream) holding a directory redirect's target.
    dir_redirect: String,
    /// Variable (a `map` on the response's type) holding the `expires` time.
    expires: String,
}

impl Names {
    fn of(opts: &ServeOptions) -> Names {
        let id = opts.id();
        Names {
            upstream: format!("memfis_{id}"),
            fallback: format!("@memfis_{id}_fallback"),
            backend: format!("@memfis_{id}_backend"),
            dir: format!("@memfis_{id}_dir"),
            probe: format!("/.memfis-{id}-dir-probe"),
            missing: format!("@memfis_{id}_missing"),
            dir_redirect: format!("memfis_{id}_dir_redirect"),
            expires: format!("memfis_{id}_expires"),
        }
    }

    /// The fallback location, when there is one (`--root` or `--php-fpm`).
    fn fallback_of(&self, opts: &ServeOptions) -> Option<&str> {
        (opts.root.is_some() || opts.php_fpm.is_some()).then_some(self.fallback.as_str())
    }
}

/// `memfis nginx-config`: prints the config.
pub fn run(args: NginxConfigArgs) -> Result<()> {
    let mut opts = ServeOptions::new(args.store.servers.clone(), args.store.prefix(), args.listen);
    opts.root = args.root;
    opts.php_fpm = args.php_fpm;
    opts.php_script = args.php_script;
    opts.server_names = args.server_names;
    opts.default_server = args.default_server;
    opts.name = args.name;
    opts.script_exts = args.script_exts;
    opts.headers = args.headers;
    opts.expires = args
        .expires
        .iter()
        .map(|e| match e.split_once('=') {
            Some((kind, time)) => Ok((kind.to_string(), time.to_string())),
            None => bail!("--expires {e}: TYPE=TIME, e.g. text/html=5m or image/*=30d"),
        })
        .collect::<Result<_>>()?;
    opts.part = if args.snippet {
        Part::Snippet
    } else if args.upstream {
        Part::Upstream
    } else {
        Part::Site
    };
    print!("{}", render(&opts)?);
    Ok(())
}

/// The part of the config `opts.part` asks for.
pub fn render(opts: &ServeOptions) -> Result<String> {
    check(opts)?;
    let names = Names::of(opts);
    let mut c = String::new();
    writeln!(
        c,
        "# Generated by `memfis nginx-config`: serves the tree that `memfis mount` writes"
    )?;
    writeln!(
        c,
        "# under prefix {}, straight from memcached.",
        opts.prefix
    )?;
    match opts.part {
        Part::Upstream => upstream(&mut c, opts, &names)?,
        Part::Snippet => {
            writeln!(
                c,
                "# Include inside a server {{}}; the upstream {} comes from \
                 `memfis nginx-config --upstream` in the http context.",
                names.upstream
            )?;
            locations(&mut c, opts, &names, "")?;
        }
        Part::Site => {
            upstream(&mut c, opts, &names)?;
            writeln!(c)?;
            server(&mut c, opts, &names)?;
        }
    }
    Ok(c)
}

/// An `expires` time nginx accepts: a number with an optional unit, `max`, `epoch` or `off`.
fn is_nginx_time(t: &str) -> bool {
    if matches!(t, "max" | "epoch" | "off") {
        return true;
    }
    // Seconds and up, parts may combine (1h30m), negative means already expired. Not `ms`:
    // nginx's `expires` ignores it without a word when it comes through a variable.
    let mut rest = t.strip_prefix('-').unwrap_or(t);
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 9 {
            return false;
        }
        rest = &rest[digits..];
        let unit = rest.chars().next().filter(|c| "smhdwMy".contains(*c));
        match unit {
            Some(u) => rest = &rest[u.len_utf8()..],
            None if rest.is_empty() => {}
            None => return false,
        }
    }
    true
}

/// The `map` from the response's content type to its `expires` time (`--expires`).
fn expires_map(c: &mut String, opts: &ServeOptions, names: &Names) -> std::fmt::Result {
    if opts.expires.is_empty() {
        return Ok(());
    }
    writeln!(
        c,
        "# How long browsers and caches may keep a response, by its type (--expires): the"
    )?;
    writeln!(
        c,
        "# store sends no Last-Modified or ETag, so this is what saves a second download."
    )?;
    writeln!(c, "map $sent_http_content_type ${} {{", names.expires)?;
    let default = opts.expires.iter().find(|(k, _)| k == "default");
    writeln!(
        c,
        "    default {};",
        default.map_or("off", |(_, t)| t.as_str())
    )?;
    for (kind, time) in opts.expires.iter().filter(|(k, _)| k != "default") {
        let pattern = match kind.strip_suffix("/*") {
            Some(major) => format!("~*^{}/", major.replace('.', "\\.").replace('+', "\\+")),
            // With or without "; charset=...".
            None => format!("~*^{}(;|$)", kind.replace('.', "\\.").replace('+', "\\+")),
        };
        writeln!(c, "    \"{pattern}\" {time};")?;
    }
    writeln!(c, "}}\n")
}

/// `expires` for a location that sends files, when `--expires` asked for it.
fn expires_line(b: &mut String, opts: &ServeOptions, names: &Names) -> std::fmt::Result {
    if !opts.expires.is_empty() {
        writeln!(b, "    expires ${};", names.expires)?;
    }
    Ok(())
}

/// In a snippet, the locations that read the disk set `--root` themselves: the enclosing
/// server's own root may be another tree (or none).
fn snippet_root(b: &mut String, opts: &ServeOptions) -> std::fmt::Result {
    match (&opts.root, opts.part) {
        (Some(root), Part::Snippet) => writeln!(b, "    root {root};"),
        _ => Ok(()),
    }
}

/// Before a location's own `add_header`s: the server's, which nginx would otherwise drop
/// there (a level with any `add_header` inherits none).
fn server_headers(b: &mut String, opts: &ServeOptions) -> std::fmt::Result {
    if let Some(file) = &opts.headers {
        writeln!(b, "    include {file};")?;
    }
    Ok(())
}

fn upstream(c: &mut String, opts: &ServeOptions, names: &Names) -> std::fmt::Result {
    writeln!(
        c,
        "# Where /dir goes when /dir/ has an index: built from the request as sent, still"
    )?;
    writeln!(
        c,
        "# percent-encoded ($uri is decoded: a name holding CR LF would add headers)."
    )?;
    writeln!(
        c,
        "# Leading slashes and backslashes collapse to one: //host/dir must not redirect off-site."
    )?;
    writeln!(c, "map $request_uri ${} {{", names.dir_redirect)?;
    writeln!(c, "    \"~^[/\\x5c]+([^?]*)(.*)$\" \"/$1/$2\";")?;
    writeln!(c, "}}\n")?;
    expires_map(c, opts, names)?;
    writeln!(c, "upstream {} {{", names.upstream)?;
    if opts.servers.len() > 1 {
        writeln!(
            c,
            "    # The same ring memfis places keys on (nginx hashes the key before escaping)."
        )?;
        writeln!(c, "    hash $memcached_key consistent;")?;
    }
    for s in &opts.servers {
        writeln!(c, "    server {s};")?;
    }
    writeln!(
        c,
        "    # Idle connections kept open: about 3x the requests/s. Must follow `hash`."
    )?;
    writeln!(c, "    keepalive 32;")?;
    writeln!(c, "}}")
}

fn server(c: &mut String, opts: &ServeOptions, names: &Names) -> std::fmt::Result {
    writeln!(c, "server {{")?;
    let default = if opts.default_server {
        " default_server"
    } else {
        ""
    };
    writeln!(c, "    listen {}{default};", opts.listen)?;
    if opts.server_names.is_empty() {
        writeln!(
            c,
            "    # No --server-name: this site gets only requests no other server claims, and only"
        )?;
        writeln!(
            c,
            "    # if it is the default server of its port (--default-server; Debian's stock"
        )?;
        writeln!(
            c,
            "    # sites-enabled/default already is: give names, or disable that site)."
        )?;
        writeln!(c, "    server_name _;")?;
    } else {
        writeln!(c, "    server_name {};", opts.server_names.join(" "))?;
    }
    if let Some(root) = &opts.root {
        writeln!(c, "    root {root};")?;
    }
    locations(c, opts, names, "    ")?;
    writeln!(c, "}}")
}

/// The site's locations, each line indented by `indent`.
fn locations(c: &mut String, opts: &ServeOptions, names: &Names, indent: &str) -> std::fmt::Result {
    let mut body = String::new();
    refused_locations(&mut body, opts)?;
    store_locations(&mut body, opts, names)?;
    fallback_locations(&mut body, opts, names)?;
    for line in body.lines() {
        if line.is_empty() {
            writeln!(c)?;
        } else {
            writeln!(c, "{indent}{line}")?;
        }
    }
    Ok(())
}

/// Locations answering 403 whatever the store holds: hidden paths, script sources (run by
/// php-fpm when there is one) and their backup copies.
fn refused_locations(b: &mut String, opts: &ServeOptions) -> std::fmt::Result {
    writeln!(
        b,
        "\n# Hidden paths (a component starting with `.`) are refused, /.well-known/ excepted."
    )?;
    writeln!(b, "location ~ \"^/\\.(?!well-known/)|^/.+/\\.\" {{")?;
    writeln!(b, "    return 403;")?;
    writeln!(b, "}}\n")?;

    let exts = opts.scripts().join("|");
    writeln!(
        b,
        "# Scripts are never served as bytes: {}.",
        if opts.php_fpm.is_some() {
            "php-fpm runs them"
        } else {
            "no PHP backend, so they are refused"
        }
    )?;
    writeln!(b, "location ~* \"\\.({exts})$\" {{")?;
    if let Some(fpm) = &opts.php_fpm {
        writeln!(
            b,
            "    # The script under the document root (--root), never the store's copy."
        )?;
        writeln!(
            b,
            "    # Only a script that exists: /upload.txt/x.php must not reach php-fpm."
        )?;
        snippet_root(b, opts)?;
        writeln!(b, "    try_files $uri =404;")?;
        writeln!(b, "    include /etc/nginx/fastcgi_params;")?;
        writeln!(b, "    fastcgi_param SCRIPT_FILENAME $document_root$uri;")?;
        writeln!(b, "    fastcgi_param SCRIPT_NAME $uri;")?;
        writeln!(b, "    fastcgi_pass {fpm};")?;
    } else {
        writeln!(b, "    return 403;")?;
    }
    writeln!(b, "}}\n")?;

    let scripts = opts.scripts();
    let sources: Vec<&str> = SOURCE_EXTS
        .iter()
        .copied()
        .filter(|e| !scripts.iter().any(|s| s == e))
        .collect();
    if !sources.is_empty() {
        writeln!(
            b,
            "# Other PHP sources (includes, archives, old extensions) are never served either."
        )?;
        writeln!(b, "location ~* \"\\.({})$\" {{", sources.join("|"))?;
        writeln!(b, "    return 403;")?;
        writeln!(b, "}}\n")?;
    }

    // php\d? covers php and php3-php8 (scripts or not).
    let mut backed_up: Vec<String> = ["php\\d?", "phtml", "pht", "phar", "phps", "inc"]
        .map(String::from)
        .to_vec();
    let php_n = |e: &str| {
        e.strip_prefix("php")
            .is_some_and(|n| n.len() <= 1 && n.chars().all(|c| c.is_ascii_digit()))
    };
    for e in scripts.iter().filter(|e| !php_n(e)) {
        if !backed_up.contains(e) {
            backed_up.push(e.clone());
        }
    }
    writeln!(
        b,
        "# Backup copies of scripts and PHP sources (an editor's, a deploy's) are never served."
    )?;
    writeln!(
        b,
        "location ~* \"\\.({})(~|_|\\.|\\.(bak|old|orig|save|dist|tmp|swp|swo|swx|backup|copy|\\d+)~?)$\" {{",
        backed_up.join("|")
    )?;
    writeln!(b, "    return 403;")?;
    writeln!(b, "}}\n")?;
    writeln!(b, "# An editor's autosave (`#name#`), whatever it saves.")?;
    writeln!(b, "location ~ \"/#[^/]*#$\" {{")?;
    writeln!(b, "    return 403;")?;
    writeln!(b, "}}\n")?;

    Ok(())
}

/// Locations serving from the store: a directory's index, files, and the `/dir` -> `/dir/`
/// redirect with the subrequest that looks for the index.
fn store_locations(b: &mut String, opts: &ServeOptions, names: &Names) -> std::fmt::Result {
    let prefix = &opts.prefix;
    let fallback = names.fallback_of(opts);
    // Where a miss goes once nothing in the store answers: the fallbacks, or a plain 404.
    let miss = fallback.unwrap_or(names.missing.as_str());
    writeln!(
        b,
        "# A directory is served by its index.html (the memcached module looks up no index)."
    )?;
    writeln!(b, "location ~ /$ {{")?;
    writeln!(b, "    default_type text/html;")?;
    store_directives(b, opts, names, "${uri}index.html", fallback)?;
    if opts.root.is_some() {
        writeln!(
            b,
            "    # The root's index comes back through the store locations: let them fall back."
        )?;
        writeln!(b, "    recursive_error_pages on;")?;
    }
    writeln!(b, "}}\n")?;

    writeln!(
        b,
        "# Files: Content-Type comes from nginx's types map by extension. A miss may be a"
    )?;
    writeln!(b, "# directory asked for without its slash.")?;
    writeln!(b, "location / {{")?;
    store_directives(b, opts, names, "$uri", Some(&names.dir))?;
    writeln!(
        b,
        "    # The directory check below may send the request on to a further error page."
    )?;
    writeln!(b, "    recursive_error_pages on;")?;
    writeln!(b, "}}\n")?;

    writeln!(
        b,
        "# /dir -> 301 /dir/ when the store has /dir/index.html (what /dir/ would serve): a"
    )?;
    writeln!(
        b,
        "# subrequest looks for it; found, the request ends in a redirect, else it goes on."
    )?;
    writeln!(b, "location {} {{", names.dir)?;
    writeln!(
        b,
        "    set $memfis_dir_index \"{prefix}${{uri}}/index.html\";"
    )?;
    writeln!(b, "    auth_request {};", names.probe)?;
    writeln!(b, "    error_page 403 = {miss};")?;
    writeln!(
        b,
        "    # The fallback may pass a miss on again (to the PHP backend)."
    )?;
    writeln!(b, "    recursive_error_pages on;")?;
    server_headers(b, opts)?;
    writeln!(b, "    add_header Location ${} always;", names.dir_redirect)?;
    writeln!(b, "    try_files /.memfis-no-file =301;")?;
    writeln!(b, "}}")?;
    writeln!(b, "location = {} {{", names.probe)?;
    writeln!(b, "    internal;")?;
    writeln!(b, "    set $memcached_key $memfis_dir_index;")?;
    writeln!(b, "    memcached_pass {};", names.upstream)?;
    writeln!(
        b,
        "    # Missing (or store down): no directory here; 403 tells auth_request so."
    )?;
    writeln!(b, "    error_page 404 502 504 =403 /.memfis-no-file;")?;
    writeln!(b, "}}")?;

    Ok(())
}

/// Where a miss goes: a plain 404 without fallbacks, else the root on disk, then php-fpm.
fn fallback_locations(b: &mut String, opts: &ServeOptions, names: &Names) -> std::fmt::Result {
    let fallback = names.fallback_of(opts);
    if fallback.is_none() {
        writeln!(b, "location {} {{", names.missing)?;
        writeln!(b, "    return 404;")?;
        writeln!(b, "}}")?;
    }
    if let Some(f) = fallback {
        let next = if opts.php_fpm.is_some() {
            names.backend.as_str()
        } else {
            "=404"
        };
        writeln!(b, "\nlocation {f} {{")?;
        if opts.root.is_some() {
            snippet_root(b, opts)?;
            expires_line(b, opts, names)?;
            server_headers(b, opts)?;
            writeln!(b, "    add_header X-Memfis-Source root always;")?;
            writeln!(
                b,
                "    # nginx's static handler: a file, /dir -> 301 /dir/, /dir/ -> its index"
            )?;
            writeln!(
                b,
                "    # (looked up again through the store), a miss on to the next fallback."
            )?;
            writeln!(b, "    index index.html;")?;
            if opts.php_fpm.is_some() {
                writeln!(b, "    recursive_error_pages on;")?;
                writeln!(b, "    error_page 404 = {next};")?;
            }
        } else {
            writeln!(b, "    try_files /.memfis-no-file {next};")?;
        }
        writeln!(b, "}}")?;
    }
    if let Some(fpm) = &opts.php_fpm {
        let script = opts
            .php_script
            .as_deref()
            .unwrap_or("$document_root/index.php");
        writeln!(
            b,
            "\n# Dynamic pages: PHP renders the page and may write it into the mount,"
        )?;
        writeln!(
            b,
            "# so the next request is served from the store without PHP."
        )?;
        writeln!(b, "location {} {{", names.backend)?;
        snippet_root(b, opts)?;
        server_headers(b, opts)?;
        writeln!(b, "    add_header X-Memfis-Source backend always;")?;
        writeln!(b, "    include /etc/nginx/fastcgi_params;")?;
        writeln!(b, "    fastcgi_param SCRIPT_FILENAME {script};")?;
        writeln!(b, "    fastcgi_param SCRIPT_NAME /index.php;")?;
        writeln!(b, "    fastcgi_param MEMFIS_PATH $uri;")?;
        writeln!(b, "    fastcgi_pass {fpm};")?;
        writeln!(b, "}}")?;
    }
    Ok(())
}

/// What a location serving from the store holds: the key of `key` (after the prefix), the
/// upstream, timeouts, gzip, headers, and where errors go (502/504 to the fallbacks, 404 to
/// `on_404`).
fn store_directives(
    b: &mut String,
    opts: &ServeOptions,
    names: &Names,
    key: &str,
    on_404: Option<&str>,
) -> std::fmt::Result {
    let prefix = &opts.prefix;
    let fallback = names.fallback_of(opts);
    writeln!(b, "    set $memcached_key \"{prefix}{key}\";")?;
    writeln!(b, "    memcached_pass {};", names.upstream)?;
    writeln!(b, "    memcached_connect_timeout 1s;")?;
    writeln!(b, "    memcached_read_timeout 2s;")?;
    writeln!(b, "    memcached_send_timeout 2s;")?;
    writeln!(
        b,
        "    # Read a typical page from memcached in one go, not 4 KB at a time."
    )?;
    writeln!(b, "    memcached_buffer_size 32k;")?;
    writeln!(
        b,
        "    # Files `memfis mount --gzip` stored compressed: as they are to clients that"
    )?;
    writeln!(
        b,
        "    # accept gzip (HTTP/1.0 ones too), unpacked for the others."
    )?;
    writeln!(
        b,
        "    memcached_gzip_flag {};",
        memfis_fs::layout::data_codec::GZIP_FLAG
    )?;
    writeln!(b, "    gunzip on;")?;
    writeln!(b, "    gzip_http_version 1.0;")?;
    writeln!(
        b,
        "    # Caches between here and the client must key on it too."
    )?;
    expires_line(b, opts, names)?;
    server_headers(b, opts)?;
    writeln!(b, "    add_header Vary Accept-Encoding;")?;
    writeln!(b, "    add_header X-Memfis-Source store always;")?;
    if let Some(f) = fallback {
        writeln!(
            b,
            "    # Store down (502) or slow (504): try the fallbacks."
        )?;
        writeln!(b, "    error_page 502 504 = {f};")?;
    }
    if let Some(target) = on_404 {
        writeln!(b, "    error_page 404 = {target};")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ServeOptions {
        ServeOptions::new(
            vec!["127.0.0.1:11211".into()],
            "memfis://web".into(),
            "8080".into(),
        )
    }

    #[test]
    fn hash_comes_before_keepalive_with_several_servers() {
        let mut o = opts();
        o.servers.push("127.0.0.1:11212".into());
        let c = render(&o).unwrap();
        let hash = c.find("hash $memcached_key consistent;").unwrap();
        assert!(hash < c.find("keepalive").unwrap());
        assert!(!render(&opts()).unwrap().contains("hash "));
    }

    #[test]
    fn refuses_prefixes_nginx_would_escape_or_cannot_quote() {
        for bad in ["a b", "a%b", "memfis://$host", "x\"y", "a;b"] {
            let mut o = opts();
            o.prefix = bad.into();
            assert!(render(&o).is_err(), "{bad}");
        }
        let mut o = opts();
        o.script_exts = vec!["p)hp".into()];
        assert!(render(&o).is_err());
    }

    #[test]
    fn fallback_chain_only_when_asked() {
        assert!(!render(&opts()).unwrap().contains("@memfis_web_fallback"));
        let mut o = opts();
        o.root = Some("/srv/site".into());
        o.php_fpm = Some("127.0.0.1:9000".into());
        let c = render(&o).unwrap();
        assert!(c.contains("error_page 502 504 = @memfis_web_fallback;"));
        assert!(c.contains("error_page 404 = @memfis_web_backend;"));
        assert!(c.contains("fastcgi_pass 127.0.0.1:9000;"));
    }

    #[test]
    fn names_are_unique_per_site_and_parts_split() {
        let mut o = opts();
        o.prefix = "memfis://www.Example.com".into();
        assert_eq!(o.id(), "www_example_com");
        o.name = Some("shop".into());
        o.part = Part::Snippet;
        let snippet = render(&o).unwrap();
        assert!(!snippet.contains("upstream memfis_shop {"));
        assert!(!snippet.lines().any(|l| l.starts_with("server {")));
        assert!(snippet.contains("memcached_pass memfis_shop;"));
        o.part = Part::Upstream;
        let up = render(&o).unwrap();
        assert!(up.contains("upstream memfis_shop {") && !up.contains("location"));
    }
}

//! What a site serves and how: the options `memfis nginx-config` and `memfis up` fill in,
//! and the checks that keep every value something an nginx config can hold as it is.

use anyhow::{Result, bail};

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
    /// Copies of each key the tree keeps (`--replicas`): above 1, a request the first server
    /// cannot answer (down, timed out, or back empty) goes to the next copy.
    pub replicas: usize,
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
            replicas: 1,
        }
    }

    /// The site's id: `--name`, or the prefix without its scheme, as letters, digits and `_`.
    pub(crate) fn id(&self) -> String {
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
    pub(crate) fn scripts(&self) -> Vec<String> {
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

/// Refuses options an nginx config could not hold as they are (quoting, patterns, units).
/// (Over 80 lines: one independent check per option, each with its own message.)
pub(crate) fn check(opts: &ServeOptions) -> Result<()> {
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

//! `memfis nginx-config`: the command's arguments as serving options, the config printed.

use anyhow::{Result, bail};
use memfis_serving::{Part, ServeOptions, render};

use crate::cli::NginxConfigArgs;

/// `memfis nginx-config`: prints the config.
pub fn run(args: NginxConfigArgs) -> Result<()> {
    let mut opts = ServeOptions::new(args.store.servers.clone(), args.store.prefix(), args.listen);
    opts.root = args.root;
    opts.replicas = args.store.replicas.unwrap_or(1) as usize;
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

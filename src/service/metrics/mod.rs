//! `--metrics ADDR`: the mount's figures over HTTP in Prometheus's text format (version 0.0.4).
//!
//! The figures live where they are counted (FUSE operations here, round trips in the
//! memcached client, publishing and caches in the filesystem crate), as plain atomics: those
//! crates know no metrics library. Rendering their snapshots is a few lines of text, so this
//! module writes the exposition format itself rather than mirror every figure into a
//! registry; tiny_http serves it.

pub mod fuse_ops;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use memfis_fs::MemFs;
use memfis_memcache::{Client, Store};
use memfis_tools::refill::RefillStatus;

use fuse_ops::FUSE_OPS;

/// Starts serving `GET /metrics` at `addr` on a thread of its own; `refills` is the
/// background refill's status, when the mount runs one (`--replicas 2` or more).
pub fn serve(
    addr: SocketAddr,
    fs: Arc<MemFs<Arc<Client>>>,
    refills: Option<Arc<RefillStatus>>,
) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot serve metrics at {addr}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let content_type = tiny_http::Header::from_bytes(
                        "Content-Type",
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .expect("static header");
                    tiny_http::Response::from_string(render(&fs, refills.as_deref()))
                        .with_header(content_type)
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })
        .context("starting the metrics thread")?;
    tracing::info!("metrics at http://{addr}/metrics");
    Ok(())
}

/// Every figure of the mount, in the exposition format. (Over 80 lines: one family after
/// another, in the order `/metrics` lists them; nothing branches.)
pub fn render(fs: &MemFs<Arc<Client>>, refills: Option<&RefillStatus>) -> String {
    let mut out = Exposition::default();

    out.family(
        "memfis_fuse_requests_total",
        "FUSE requests answered, by operation.",
        "counter",
    );
    for (op, calls) in FUSE_OPS.calls() {
        out.sample("memfis_fuse_requests_total", &[("op", op.name())], calls);
    }
    out.family(
        "memfis_fuse_errors_total",
        "FUSE requests answered with an error, by operation and errno name.",
        "counter",
    );
    for ((op, errno), count) in FUSE_OPS.errors() {
        let name = errno_name(errno);
        out.sample(
            "memfis_fuse_errors_total",
            &[("op", op.name()), ("errno", &name)],
            count,
        );
    }

    let client = fs.store();
    let (trips, commands) = client.counters();
    out.counter(
        "memfis_store_round_trips_total",
        "Pipelined exchanges with a server.",
        trips,
    );
    out.counter(
        "memfis_store_commands_total",
        "memcached commands sent.",
        commands,
    );
    out.counter(
        "memfis_store_failed_commands_total",
        "Commands that failed because a server was unreachable, timed out or broke off.",
        client.failed_commands(),
    );
    let latency = client.latency();
    out.family(
        "memfis_store_round_trip_seconds",
        "Time of each exchange with a server.",
        "histogram",
    );
    for (bound, count) in &latency.cumulative {
        let le = format!("{}", *bound as f64 / 1e6);
        out.sample(
            "memfis_store_round_trip_seconds_bucket",
            &[("le", &le)],
            *count,
        );
    }
    out.sample(
        "memfis_store_round_trip_seconds_bucket",
        &[("le", "+Inf")],
        latency.count,
    );
    out.sample_f64(
        "memfis_store_round_trip_seconds_sum",
        latency.sum_micros as f64 / 1e6,
    );
    out.sample("memfis_store_round_trip_seconds_count", &[], latency.count);

    let activity = fs.activity();
    out.counter(
        "memfis_published_files_total",
        "Files whose bytes were published to the store.",
        activity.files_published,
    );
    out.counter(
        "memfis_published_bytes_total",
        "Bytes of file content published to the store.",
        activity.bytes_published,
    );
    out.counter(
        "memfis_cache_hits_total",
        "Namespace questions the mount's caches answered without the store.",
        activity.cache_hits,
    );
    out.counter(
        "memfis_cache_misses_total",
        "Namespace questions that went to the store.",
        activity.cache_misses,
    );
    out.gauge(
        "memfis_open_files",
        "Files open through this mount.",
        activity.open_files,
    );
    out.gauge(
        "memfis_open_handles",
        "Open file handles of this mount.",
        activity.open_handles,
    );
    if client.replicas() > 1 {
        refill_figures(&mut out, client, refills);
    }
    out.family(
        "memfis_store_info",
        "The store this mount serves (value 1).",
        "gauge",
    );
    out.sample("memfis_store_info", &[("store_id", &activity.store_id)], 1);
    out.0
}

/// The copies of a replicated pool: servers lacking theirs, and the background refill.
fn refill_figures(out: &mut Exposition, client: &Client, refills: Option<&RefillStatus>) {
    out.gauge(
        "memfis_servers_lacking_copies",
        "Servers last seen answering without their in-sync marker (back empty, or new): a refill copies to them.",
        client.replication().answering_empty().len() as u64,
    );
    out.gauge(
        "memfis_servers_unreachable",
        "Servers that failed a moment ago (down, stalled, cut off), left alone for a second at a time.",
        client.replication().resting_servers() as u64,
    );
    let Some(r) = refills else { return };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    out.gauge(
        "memfis_refill_running",
        "1 while this mount refills a server from the other copies.",
        u64::from(r.running.load(Ordering::Relaxed)),
    );
    out.gauge(
        "memfis_refill_keys_planned",
        "Keys the refill running (or the last one) compares.",
        get(&r.keys_planned),
    );
    out.counter(
        "memfis_refill_keys_compared_total",
        "Keys whose copies this mount's refills compared.",
        get(&r.keys_compared),
    );
    out.counter(
        "memfis_refill_copies_total",
        "Copies this mount's refills wrote.",
        get(&r.copies_written),
    );
    out.family(
        "memfis_refills_total",
        "Refills this mount ran, by how they ended.",
        "counter",
    );
    out.sample(
        "memfis_refills_total",
        &[("result", "done")],
        get(&r.completed),
    );
    out.sample(
        "memfis_refills_total",
        &[("result", "failed")],
        get(&r.failed),
    );
    out.sample(
        "memfis_refills_total",
        &[("result", "stopped")],
        get(&r.stopped),
    );
}

/// The text being written, one family after another.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn sample_f64(&mut self, name: &str, value: f64) {
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, "counter");
        self.sample(name, &[], value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, "gauge");
        self.sample(name, &[], value);
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `ENOENT`, `EIO`, ... as errno(3) names them; the number when it has no name here.
fn errno_name(errno: i32) -> String {
    let name = nix::errno::Errno::from_raw(errno);
    match name {
        nix::errno::Errno::UnknownErrno => errno.to_string(),
        known => format!("{known:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_errnos_named() {
        let mut out = Exposition::default();
        out.sample("x_total", &[("a", "q\"b\\")], 3);
        assert_eq!(out.0, "x_total{a=\"q\\\"b\\\\\"} 3\n");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
    }
}

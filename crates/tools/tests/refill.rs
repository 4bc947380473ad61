//! The background refill on a pool of in-memory servers with two copies: a server back empty
//! gets its copies from a live mount, one mount at a time, and is then in sync. (With real
//! memcached, nginx and FUSE mounts: tests/replicas.rs at the top.)

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memfis_fs::{FsConfig, KeyLayout, MemFs};
use memfis_memcache::Store;
use memfis_memcache::memory_pool::{MemoryPool, PoolClient};
use memfis_tools::load::{LoadOptions, Source};
use memfis_tools::refill::{RefillLease, Refiller};
use memfis_tools::{Session, Silent};

const PREFIX: &str = "memfis://refill";

fn mount(pool: &Arc<MemoryPool>) -> Session<Arc<PoolClient>> {
    let client = Arc::new(pool.client());
    let cfg = FsConfig {
        replicas: Some(2),
        ..FsConfig::default()
    };
    Session::start(MemFs::new(client, KeyLayout::new(PREFIX).unwrap(), cfg).unwrap())
}

/// Loads `files` small files into the tree.
fn load(session: &Session<Arc<PoolClient>>, files: usize) {
    let src = tempfile::tempdir().unwrap();
    for i in 0..files {
        let dir = src.path().join(format!("d{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    let opts = LoadOptions {
        to: "/".into(),
        delete: false,
        checksum: false,
        dry_run: false,
        jobs: 2,
    };
    let source = Source::new(src.path()).unwrap();
    memfis_tools::load::load(session.fs(), &source, &opts, &Silent).unwrap();
}

/// Waits until `done` holds, up to `secs` seconds.
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_back_empty_is_refilled_by_a_live_mount() {
    let pool = MemoryPool::new(3);
    let one = mount(&pool);
    let two = mount(&pool);
    load(&one, 300);
    let held_before = pool.server(1).keys().len();
    assert!(held_before > 100, "server 1 held {held_before} keys");

    pool.restart_empty(1);
    let refillers: Vec<Refiller> = [&one, &two]
        .iter()
        .map(|s| Refiller::start(s.fs().clone(), 1_000_000))
        .collect();
    // Each refiller reads every server's marker, finds server 1 without it, and one of them
    // copies to it.
    let tool = pool.client();
    tool.set_replicas(
        2,
        &memfis_memcache::ReplicaKeys {
            marker: KeyLayout::new(PREFIX).unwrap().in_sync_marker(),
            ..Default::default()
        },
    )
    .unwrap();
    wait_for(30, "server 1 refilled and marked in sync", || {
        one.fs().store().servers_to_refill().is_empty()
            && two.fs().store().servers_to_refill().is_empty()
            && refillers
                .iter()
                .map(|r| {
                    r.status()
                        .completed
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .sum::<u64>()
                >= 1
    });
    let statuses: Vec<_> = refillers.iter().map(Refiller::status).collect();
    let completed: u64 = statuses
        .iter()
        .map(|s| s.completed.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(
        completed, 1,
        "one mount refills, the other waits for its lease"
    );
    let copied: u64 = statuses
        .iter()
        .map(|s| s.copies_written.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(
        copied as usize >= held_before / 2,
        "{copied} copies written for {held_before} keys lost"
    );

    // Every copy equals its primary's, and the lease is gone.
    let keys = tool.list_keys().unwrap().unwrap();
    let again = tool.resync(&keys, false, &mut |_| ControlFlow::Continue(()));
    assert_eq!(again.under_replicated, 0, "copies differ after the refill");
    assert!(again.failed.is_empty(), "{:?}", again.failed);
    let keys = KeyLayout::new(PREFIX).unwrap();
    assert_eq!(
        memfis_tools::refill::current(one.fs().store(), &keys).unwrap(),
        None::<RefillLease>,
        "the lease outlived the refill"
    );
    let alone = pool.server(1).keys().len();
    assert!(
        alone >= held_before * 9 / 10,
        "server 1 holds {alone} of {held_before} keys"
    );
}

#[test]
fn the_rate_bounds_the_keys_compared() {
    let pool = MemoryPool::new(3);
    let one = mount(&pool);
    load(&one, 400);
    pool.restart_empty(2);
    // 200 keys a second: the first groups take seconds, and the lease tells how far.
    let refiller = Refiller::start(one.fs().clone(), 200);
    let keys = KeyLayout::new(PREFIX).unwrap();
    let mut lease = None;
    wait_for(20, "the lease shows progress", || {
        lease = memfis_tools::refill::current(one.fs().store(), &keys).unwrap();
        lease.as_ref().is_some_and(|l| l.compared > 0)
    });
    let lease = lease.unwrap();
    assert_eq!(lease.mount, one.fs().mount_id());
    assert_eq!(lease.servers, ["mem2:11211"]);
    assert!(lease.keys > 400, "{lease:?}");
    let status = refiller.status();
    assert!(status.running.load(std::sync::atomic::Ordering::Relaxed));
    let started = Instant::now();
    wait_for(30, "refill done", || {
        status.completed.load(std::sync::atomic::Ordering::Relaxed) == 1
    });
    let planned = status
        .keys_planned
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        status
            .keys_compared
            .load(std::sync::atomic::Ordering::Relaxed),
        planned
    );
    // Not a timing test: only that the pace held it back at all (planned / 200 seconds,
    // some of which passed before `started`).
    assert!(
        planned < 400 || started.elapsed() >= Duration::from_millis(500),
        "{planned} keys compared without pause"
    );
    drop(refiller);
}

#[test]
fn a_dead_server_is_not_refilled_and_a_stopped_resync_marks_nothing() {
    let pool = MemoryPool::new(3);
    let one = mount(&pool);
    load(&one, 60);
    let store = one.fs().store();
    // Down: nothing to copy to (a refill would only fail).
    pool.kill(1);
    assert!(store.servers_to_refill().is_empty());
    // Back empty: found by its marker's absence, whatever this mount's batches touch.
    pool.restart_empty(1);
    assert_eq!(store.servers_to_refill(), ["mem1:11211"]);
    let keys = store.list_keys().unwrap().unwrap();
    assert!(keys.len() > 128, "{} keys", keys.len());
    let report = store.resync(&keys, true, &mut |so_far| {
        if so_far.keys > 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(report.stopped);
    assert!(report.keys < keys.len());
    assert_eq!(
        store.servers_to_refill(),
        ["mem1:11211"],
        "a resync stopped halfway marked the server in sync"
    );
    // Run to its end, it does.
    let report = store.resync(&keys, true, &mut |_| ControlFlow::Continue(()));
    assert!(!report.stopped && report.failed.is_empty(), "{report:?}");
    assert!(store.servers_to_refill().is_empty());
}

#[test]
fn a_live_mounts_lease_is_left_alone_and_a_dead_ones_dropped() {
    let pool = MemoryPool::new(3);
    let one = mount(&pool);
    load(&one, 50);
    let keys = KeyLayout::new(PREFIX).unwrap();
    let theirs = RefillLease {
        mount: "another-mount".into(),
        servers: vec!["mem0:11211".into()],
        ..RefillLease::default()
    };
    let lease = one.fs().store();
    let taken = memfis_memcache::Command::Store {
        op: memfis_memcache::StoreOp::Set,
        key: keys.refill_lease(),
        value: Arc::new(serde_json::to_vec(&theirs).unwrap()),
        flags: 0,
        exptime: 60,
    };
    assert!(lease.run(taken).is_ok());
    let alive = memfis_memcache::Command::Store {
        op: memfis_memcache::StoreOp::Set,
        key: keys.alive("another-mount"),
        value: Arc::new(b"1".to_vec()),
        flags: 0,
        exptime: 60,
    };
    assert!(lease.run(alive).is_ok());
    pool.restart_empty(0);
    let refiller = Refiller::start(one.fs().clone(), 1_000_000);
    std::thread::sleep(Duration::from_secs(5));
    let status = refiller.status();
    assert_eq!(
        status.completed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "refilled under another mount's lease"
    );
    assert_eq!(
        memfis_tools::refill::current(lease, &keys).unwrap(),
        Some(theirs),
        "another mount's lease was overwritten or released"
    );
    // That mount dies (its liveness goes, its lease stays): the lease is dropped and this
    // mount refills.
    lease.delete(&keys.alive("another-mount")).unwrap();
    wait_for(20, "refilled once the lease went", || {
        status.completed.load(std::sync::atomic::Ordering::Relaxed) == 1
    });
    assert!(lease.servers_to_refill().is_empty());
}

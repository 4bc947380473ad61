//! Resync on a pool of in-memory servers: what it copies when servers come back empty one
//! after another. (Real memcached: tests/replicas.rs at the top.)

use std::ops::ControlFlow;

use memfis_memcache::memory_pool::MemoryPool;
use memfis_memcache::{Command, ReplicaKeys, Reply, Store, StoreOp};

fn keys() -> ReplicaKeys {
    ReplicaKeys {
        marker: b"t%synced".to_vec(),
        presence: b"t%alive.".to_vec(),
        ..Default::default()
    }
}

/// Both servers of a key come back empty one after the other, the first before anything
/// refilled it: the key written since the first's return lives only there, and a resync
/// must copy it to the other, never delete it as the other's miss would say.
#[test]
fn a_copy_written_after_a_return_survives_the_other_servers_return() {
    let pool = MemoryPool::new(2);
    let client = pool.client();
    client.set_replicas(2, &keys()).unwrap();
    client.mark_all_in_sync().unwrap();
    pool.restart_empty(1);
    assert_eq!(client.servers_to_refill(), ["mem1:11211"]);
    let written = Command::store(StoreOp::Set, b"t/k", b"written after server 1 came back");
    assert!(matches!(client.run(written), Ok(Reply::Stored)));
    pool.restart_empty(0);
    let report = client.resync(&[b"t/k".to_vec()], true, &mut |_| ControlFlow::Continue(()));
    for s in 0..2 {
        assert_eq!(
            pool.server(s).get(b"t/k").unwrap().map(|i| i.value),
            Some(b"written after server 1 came back".to_vec()),
            "server {s} after the resync: {report:?}"
        );
    }
}

/// Both servers of a key back empty while a third, not one of its servers, holds it (as
/// servers added two at a time leave keys): the resync says so and marks neither server in
/// sync, rather than taking the key for gone.
#[test]
fn a_key_held_only_off_its_servers_keeps_them_out_of_sync() {
    use memfis_memcache::replicas::Servers;
    let pool = MemoryPool::new(3);
    let client = pool.client();
    client.set_replicas(2, &keys()).unwrap();
    client.mark_all_in_sync().unwrap();
    let key = b"t/elsewhere".to_vec();
    let own = client.holders(&key, 2);
    let other = (0..3).find(|s| !own.contains(s)).unwrap();
    let stored = pool
        .server(other)
        .execute(vec![Command::store(StoreOp::Set, &key, b"v")]);
    assert!(matches!(stored[0], Ok(Reply::Stored)));
    for &s in &own {
        pool.restart_empty(s);
    }
    assert_eq!(client.servers_to_refill().len(), 2);
    let report = client.resync(&[key], true, &mut |_| ControlFlow::Continue(()));
    assert!(
        report
            .failed
            .iter()
            .any(|(_, e)| e.to_string().contains("held only by")),
        "{report:?}"
    );
    assert_eq!(
        client.servers_to_refill().len(),
        2,
        "marked in sync without the key"
    );
}

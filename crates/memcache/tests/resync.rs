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

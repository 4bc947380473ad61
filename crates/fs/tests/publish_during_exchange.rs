//! A publish whose tokens are read while another mount's RENAME_EXCHANGE is between its two
//! halves: the exchange has swapped the records (so the publishing file's record already
//! names the other file's key, and stays that version) but not yet the bytes. The tokens of
//! that key are the other file's; a cas on them put this file's bytes there, and the
//! exchange then moved them to the other file's new name: the other file lost its bytes and
//! its record counted another size than nginx served. The race soak of real mounts found it
//! (with the store trace). Tokens now count only while no operation that may move the
//! file's bytes holds the namespace lock.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memfis_fs::{KeyLayout, MemFs, ROOT_INO, RenameFlags};
use memfis_memcache::memory::MemoryStore;
use memfis_memcache::{CmdResult, Command, Store};
use support::*;

/// The exchanging mount's store: before the first batch that reads one of `keys` with a
/// plain `get` (the exchange's data step), it says so and waits to be let go.
struct PausedBeforeData {
    inner: Arc<MemoryStore>,
    keys: Vec<Vec<u8>>,
    paused: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Store for PausedBeforeData {
    fn execute(&self, batch: Vec<Command>) -> Vec<CmdResult> {
        let data_step = batch
            .iter()
            .any(|c| matches!(c, Command::Get(k) if self.keys.contains(k)));
        if data_step && let Some((reached, go)) = self.paused.lock().unwrap().take() {
            reached.send(()).unwrap();
            go.recv().unwrap();
        }
        self.inner.execute(batch)
    }
}

#[test]
fn a_publish_during_an_exchange_keeps_the_other_files_bytes() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyLayout::new("memfis://publish-exchange").unwrap();
    let writer = open(&store, &keys);
    let a = write(&writer, ROOT_INO, "a", b"old bytes of a");
    let b = write(&writer, ROOT_INO, "b", b"the bytes of b, longer");
    let fh = writer.open(a, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    writer.write(fh, 0, b"new a", false).unwrap();

    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let paused = PausedBeforeData {
        inner: store.clone(),
        keys: vec![keys.data(b"/a"), keys.data(b"/b")],
        paused: Mutex::new(Some((reached_tx, go_rx))),
    };
    let exchanger = MemFs::new(paused, keys.clone(), uncached()).unwrap();
    std::thread::scope(|s| {
        let exchange = s.spawn(|| {
            let flags = RenameFlags {
                exchange: true,
                ..RenameFlags::default()
            };
            exchanger.rename(ROOT_INO, b"a", ROOT_INO, b"b", flags)
        });
        reached_rx.recv().unwrap(); // records swapped, bytes not yet
        let publish = s.spawn(|| writer.release(fh));
        // Time for the publish to write, if it were going to, before the bytes move.
        std::thread::sleep(Duration::from_millis(300));
        go_tx.send(()).unwrap();
        exchange.join().unwrap().unwrap();
        publish.join().unwrap().unwrap();
    });

    let fresh = open(&store, &keys);
    let get = |path: &[u8]| store.get(&keys.data(path)).unwrap().unwrap().value;
    assert_eq!(get(b"/a"), b"the bytes of b, longer", "b lost its bytes");
    assert_eq!(get(b"/b"), b"new a");
    assert_eq!(fresh.getattr(b).unwrap().size, 22);
    assert_eq!(fresh.getattr(a).unwrap().size, 5);
}

//! What one round of a publish writes, worked out from the open file and the keys of its
//! names without the store: which data keys, which command for each (`cas` on the key's token,
//! `add`, or `set` of the private key), and the record to store. `files/io.rs` sends the plan
//! (with its fence reads) and applies the replies to the open file.

use memfis_memcache::command::Value;

use crate::files::open_files::OpenFile;
use crate::layout::record::Inode;

/// The keys of a publish round (`Namespace::bytes_keys`, worked out by the caller).
#[derive(Debug, Clone)]
pub(crate) struct RoundKeys {
    /// Where the stored record keeps the bytes.
    pub stored: Vec<Vec<u8>>,
    /// Where the record to publish keeps them (another set after a mode change).
    pub publish: Vec<Vec<u8>>,
    /// The inode's private key (`KeyLayout::private_data`).
    pub private: Vec<u8>,
}

/// What must happen before a round's writes can be planned ([`before_round`]).
#[derive(Debug, PartialEq)]
pub(crate) enum Before {
    /// A mode change that serves or withdraws the file, whose buffer is not to publish: the
    /// bytes move with it as the store holds them now (a buffer published already may be
    /// older). Load them, then work the round out afresh.
    MoveBytes,
    /// These served keys (all the round writes) need tokens read first: some key among them
    /// that the file's names already had has none known.
    ReadTokens(Vec<Vec<u8>>),
}

/// How one data key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyWrite {
    /// The private key, by `set`: no URI reaches it, and no rename moves another file's
    /// bytes there.
    Private,
    /// A served key expected absent, by `add`, which cannot replace anything.
    Add,
    /// A served key by `cas` on the token read while it was this file's name.
    Cas(u64),
}

/// One publish round, ready to send.
#[derive(Debug, PartialEq)]
pub(crate) struct PublishPlan {
    /// The buffer to write, if it holds bytes not published (else only the record goes).
    pub bytes: Option<Value>,
    /// Each data key the bytes go to, with its command (none without bytes).
    pub writes: Vec<(Vec<u8>, KeyWrite)>,
    /// The record to store, by `cas` on `cas` (0 when unknown: refused, read again).
    pub record: Inode,
    pub cas: u64,
    /// Keys that hold the bytes as the stored record has them and will not once `record` is
    /// stored (the mode changed): they go like keys a rename took away, once no name holds
    /// bytes there. A private key nothing ever wrote is not among them.
    pub left: Vec<Vec<u8>>,
}

/// The keys a round writes: every key of the record to publish if the buffer is to publish,
/// none otherwise (only the record goes).
fn written_keys<'k>(of: &OpenFile, keys: &'k RoundKeys) -> &'k [Vec<u8>] {
    match of.buffer_dirty() {
        true => &keys.publish,
        false => &[],
    }
}

/// What the round needs first, if anything (see [`Before`]).
pub(crate) fn before_round(of: &OpenFile, keys: &RoundKeys) -> Option<Before> {
    if keys.publish != keys.stored && !of.buffer_dirty() {
        return Some(Before::MoveBytes);
    }
    let served: Vec<Vec<u8>> = written_keys(of, keys)
        .iter()
        .filter(|k| **k != keys.private)
        .cloned()
        .collect();
    // A key this file's names already had needs its token; a new one (a mode change
    // serving the file, `cp -a`'s 0600-then-0644) is expected absent and is written
    // with `add`, which cannot replace anything.
    // (So is one this publish wrote in an earlier round: it is no longer absent.)
    let unknown = served.iter().any(|k| {
        of.key_token(k).is_none() && (keys.stored.contains(k) || of.written().contains(k))
    });
    unknown.then_some(Before::ReadTokens(served))
}

/// The round's writes over `record` (the open file's [`OpenFile::record_to_publish`]), once
/// [`before_round`] needs nothing.
pub(crate) fn plan_round(of: &OpenFile, record: Inode, keys: &RoundKeys) -> PublishPlan {
    let written = written_keys(of, keys);
    // Served keys only with their tokens (see `RecordVersion::key_tokens`). New tokens are
    // not read back (that would read the bytes back): a later publish of this open
    // file reads them first.
    let writes = written
        .iter()
        .map(|k| {
            let write = match of.key_token(k) {
                _ if *k == keys.private => KeyWrite::Private,
                Some(0) | None => KeyWrite::Add,
                Some(token) => KeyWrite::Cas(token),
            };
            (k.clone(), write)
        })
        .collect();
    let never_made = |k: &Vec<u8>| *k == keys.private && of.private_key_unused();
    let left = keys
        .stored
        .iter()
        .filter(|k| !written.contains(k) && !never_made(k))
        .cloned()
        .collect();
    PublishPlan {
        bytes: of
            .buffer_dirty()
            .then(|| of.buffer().cloned().unwrap_or_default()),
        writes,
        record,
        cas: of.cas().unwrap_or(0),
        left,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::layout::attr::SetAttr;
    use crate::layout::record::{Kind, Link};

    const PRIVATE: &[u8] = b"p%d7";
    const SERVED: &[u8] = b"p/a";

    fn file(mode: u32, size: usize) -> OpenFile {
        let mut rec = Inode::new(Kind::File, mode, 0, 0, vec![Link::new(1, b"a")]);
        rec.size = size as u64;
        let mut of = OpenFile::new(rec, Some(40));
        of.loaded(Arc::new(vec![b'x'; size]));
        of
    }

    fn keys(stored: &[&[u8]], publish: &[&[u8]]) -> RoundKeys {
        RoundKeys {
            stored: stored.iter().map(|k| k.to_vec()).collect(),
            publish: publish.iter().map(|k| k.to_vec()).collect(),
            private: PRIVATE.to_vec(),
        }
    }

    fn plan(of: &OpenFile, keys: &RoundKeys) -> PublishPlan {
        assert_eq!(before_round(of, keys), None);
        plan_round(of, of.record_to_publish(), keys)
    }

    #[test]
    fn a_served_key_is_written_by_cas_on_its_token() {
        let mut of = file(0o644, 3);
        of.take_key_tokens([(SERVED.to_vec(), 9)].into());
        of.write_buffer(0, b"hello");
        let k = keys(&[SERVED], &[SERVED]);
        let p = plan(&of, &k);
        assert_eq!(p.writes, vec![(SERVED.to_vec(), KeyWrite::Cas(9))]);
        assert_eq!(p.bytes.as_deref().map(|b| &b[..]), Some(&b"hello"[..]));
        assert_eq!((p.record.size, p.cas), (5, 40));
        assert!(p.left.is_empty());
    }

    #[test]
    fn a_key_the_names_had_without_a_token_needs_tokens_read_first() {
        let mut of = file(0o644, 3);
        of.write_buffer(0, b"new");
        let k = keys(&[SERVED], &[SERVED]);
        assert_eq!(
            before_round(&of, &k),
            Some(Before::ReadTokens(vec![SERVED.to_vec()]))
        );
        // Tokens of another version do not count.
        of.take_key_tokens([(SERVED.to_vec(), 9)].into());
        of.forget_version();
        assert_eq!(of.key_token(SERVED), None);
        assert!(matches!(before_round(&of, &k), Some(Before::ReadTokens(_))));
        // Nor does a token of a key written earlier by this publish, now present.
        let mut of = file(0o644, 0);
        of.write_buffer(0, b"new");
        of.note_written(SERVED);
        let k = keys(&[], &[SERVED]);
        assert!(matches!(before_round(&of, &k), Some(Before::ReadTokens(_))));
    }

    #[test]
    fn a_key_new_to_the_file_is_added_and_the_private_key_set() {
        // `cp -a`: created 0600 (bytes at the private key), served 0644 before its close.
        let mut of = file(0o600, 0);
        of.write_buffer(0, b"body");
        of.buffer_attrs(&SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        });
        let k = keys(&[PRIVATE], &[SERVED]);
        let p = plan(&of, &k);
        assert_eq!(p.writes, vec![(SERVED.to_vec(), KeyWrite::Add)]);
        assert_eq!(p.record.mode, 0o644);
        // The private key held the bytes: it goes once no name holds bytes there ...
        assert_eq!(p.left, vec![PRIVATE.to_vec()]);
        // ... unless nothing ever put bytes there (a file this mount created).
        let (record, cas) = (of.record().clone(), of.cas().unwrap());
        let mut created = OpenFile::created(record, cas, None);
        created.write_buffer(0, b"body");
        created.buffer_attrs(&SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        });
        assert!(plan(&created, &k).left.is_empty());
        // A file others may not read: its private key by `set`; a token 0 (absent) is `add`.
        let mut of = file(0o600, 0);
        of.take_key_tokens([(SERVED.to_vec(), 0)].into());
        of.write_buffer(0, b"x");
        let p = plan(&of, &keys(&[PRIVATE], &[PRIVATE, SERVED]));
        assert_eq!(
            p.writes,
            vec![
                (PRIVATE.to_vec(), KeyWrite::Private),
                (SERVED.to_vec(), KeyWrite::Add)
            ]
        );
    }

    #[test]
    fn only_bytes_the_publish_writes_give_the_record_its_size() {
        // An attribute change riding with a writer's close, the buffer published already:
        // the record keeps the size stored (another mount may have published since).
        let mut of = file(0o644, 3);
        of.write_buffer(0, b"longer");
        of.mark_buffer_clean();
        of.buffer_attrs(&SetAttr {
            uid: Some(5),
            ..SetAttr::default()
        });
        let k = keys(&[SERVED], &[SERVED]);
        let p = plan(&of, &k);
        assert_eq!((p.record.size, p.record.uid), (3, 5));
        assert!(p.writes.is_empty() && p.bytes.is_none());
    }

    #[test]
    fn a_mode_change_without_bytes_to_publish_moves_them_as_stored() {
        let mut of = file(0o600, 3);
        of.buffer_attrs(&SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        });
        let k = keys(&[PRIVATE], &[SERVED]);
        assert_eq!(before_round(&of, &k), Some(Before::MoveBytes));
        // Once the bytes are loaded again and to publish, they go to the new key.
        of.mark_buffer_dirty();
        let p = plan(&of, &k);
        assert_eq!(p.writes, vec![(SERVED.to_vec(), KeyWrite::Add)]);
        assert_eq!(p.record.size, 3);
    }
}

//! The board of a sealed room: an ordered log of opaque entries, sans-IO.
//!
//! In a sealed room the server holds no yrs document. Its members seal their board updates
//! under a key the server never sees (`docs/PROTOCOL.md` §13); the server keeps the entries in
//! the order it received them, hands the whole log to newcomers and forwards each new entry to
//! the room's readers. It reads only an entry's header: the sender it stamped, the sequence
//! number, the kind and the size. Who may append is decided before, by the room machine, from
//! the sender's identity and the room's state ([`balint_proto::rules::may_write`]).

use std::collections::HashSet;

use balint_proto::sealed::{self, Entry, SnapshotUpload};
use bytes::Bytes;

/// What became of an entry offered to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Logged; the frame that forwards it to the readers.
    Added(Bytes),
    /// The log already holds an entry of this sender and sequence number: a resend, ignored.
    Duplicate,
    /// It would take the log's ciphertext past the board size limit: refused.
    Full,
}

/// What became of a snapshot upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compacted {
    /// The covered entries are replaced by the snapshot.
    Replaced,
    /// It covers nothing, or an entry the log no longer holds (another snapshot replaced it),
    /// or its own id is taken: ignored.
    Stale,
    /// It would take the log's ciphertext past the board size limit: refused.
    Full,
}

/// A sealed room's log. See the module documentation.
#[derive(Debug, Default)]
pub struct SealedLog {
    entries: Vec<Entry>,
    /// `(sender, seq)` of every entry, so that a resend is not logged twice.
    ids: HashSet<(String, u64)>,
    /// The sum of the entries' ciphertext lengths: what the board size limit applies to.
    bytes: usize,
    limit: usize,
}

impl SealedLog {
    /// An empty log that holds at most `limit` bytes of ciphertext.
    pub fn with_limit(limit: usize) -> Self {
        SealedLog { limit, ..SealedLog::default() }
    }

    /// Offers an entry, stamped with its sender, to the log.
    pub fn append(&mut self, entry: Entry) -> Appended {
        let id = (entry.sender.clone(), entry.sealed.seq);
        if self.ids.contains(&id) {
            return Appended::Duplicate;
        }
        let bytes = self.bytes.saturating_add(entry.sealed.ciphertext.len());
        if bytes > self.limit {
            return Appended::Full;
        }
        let frame = sealed::encode_entry(&entry);
        self.bytes = bytes;
        self.ids.insert(id);
        self.entries.push(entry);
        Appended::Added(frame)
    }

    /// Replaces the entries `upload` covers by its snapshot, stamped with `sender`, at the
    /// place of the earliest covered entry; entries not covered keep their order.
    pub fn compact(&mut self, sender: String, upload: SnapshotUpload) -> Compacted {
        let covered: HashSet<(String, u64)> = upload.covers.into_iter().collect();
        if covered.is_empty() || !covered.iter().all(|id| self.ids.contains(id)) {
            // Nothing to replace, or entries already replaced by another snapshot: a stale
            // snapshot, which would bring back what they dropped.
            return Compacted::Stale;
        }
        let id = (sender.clone(), upload.sealed.seq);
        if self.ids.contains(&id) && !covered.contains(&id) {
            return Compacted::Stale;
        }
        let freed: usize = self
            .entries
            .iter()
            .filter(|e| covered.contains(&(e.sender.clone(), e.sealed.seq)))
            .map(|e| e.sealed.ciphertext.len())
            .sum();
        let bytes = (self.bytes - freed).saturating_add(upload.sealed.ciphertext.len());
        if bytes > self.limit {
            return Compacted::Full;
        }
        let mut snapshot = Some(Entry { sender, sealed: upload.sealed });
        let mut entries = Vec::with_capacity(self.entries.len() + 1 - covered.len());
        for entry in self.entries.drain(..) {
            if covered.contains(&(entry.sender.clone(), entry.sealed.seq)) {
                entries.extend(snapshot.take());
            } else {
                entries.push(entry);
            }
        }
        self.entries = entries;
        for id in &covered {
            self.ids.remove(id);
        }
        self.ids.insert(id);
        self.bytes = bytes;
        Compacted::Replaced
    }

    /// The log frame for a newcomer: every entry, in order.
    pub fn log_frame(&self) -> Bytes {
        sealed::encode_log(&self.entries)
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The sum of the entries' ciphertext lengths.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use balint_proto::sealed::{Frame, Kind, Sealed};

    use super::*;

    fn entry(sender: &str, seq: u64, len: usize) -> Entry {
        let sealed = Sealed { seq, kind: Kind::Update, nonce: [1; 24], ciphertext: vec![2; len].into() };
        Entry { sender: sender.into(), sealed }
    }

    #[test]
    fn entries_are_kept_in_order_once_and_within_the_limit() {
        let mut log = SealedLog::with_limit(100);
        assert_eq!(sealed::decode(&log.log_frame()), Ok(Frame::Log(vec![])));
        let Appended::Added(frame) = log.append(entry("a", 1, 40)) else { panic!("not added") };
        assert_eq!(sealed::decode(&frame), Ok(Frame::Entry(entry("a", 1, 40))));
        assert!(matches!(log.append(entry("b", 1, 40)), Appended::Added(_)));
        assert_eq!(log.append(entry("a", 1, 40)), Appended::Duplicate);
        assert_eq!(log.append(entry("a", 2, 21)), Appended::Full);
        assert!(matches!(log.append(entry("a", 2, 20)), Appended::Added(_)));
        assert_eq!(log.bytes(), 100);
        let expected = vec![entry("a", 1, 40), entry("b", 1, 40), entry("a", 2, 20)];
        assert_eq!(sealed::decode(&log.log_frame()), Ok(Frame::Log(expected)));
    }

    fn snapshot(seq: u64, covers: &[(&str, u64)], len: usize) -> SnapshotUpload {
        let sealed = Sealed { seq, kind: Kind::Snapshot, nonce: [4; 24], ciphertext: vec![5; len].into() };
        SnapshotUpload { covers: covers.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(), sealed }
    }

    #[test]
    fn a_snapshot_replaces_what_it_covers_in_place_and_keeps_the_rest_in_order() {
        let mut log = SealedLog::with_limit(100);
        for (sender, seq) in [("a", 1), ("b", 1), ("a", 2), ("c", 1)] {
            log.append(entry(sender, seq, 20));
        }
        assert_eq!(log.compact("b".into(), snapshot(9, &[("a", 1), ("a", 2), ("nobody", 1)], 10)), Compacted::Stale);
        assert_eq!(log.compact("b".into(), snapshot(9, &[], 10)), Compacted::Stale);
        assert_eq!(log.compact("b".into(), snapshot(9, &[("b", 1), ("a", 2)], 61)), Compacted::Full);
        assert_eq!(log.compact("b".into(), snapshot(9, &[("b", 1), ("a", 2)], 30)), Compacted::Replaced);
        let order: Vec<(String, u64)> = log.entries().iter().map(|e| (e.sender.clone(), e.sealed.seq)).collect();
        assert_eq!(order, [("a".into(), 1), ("b".into(), 9), ("c".into(), 1)]);
        assert_eq!(log.bytes(), 70);
        // The covered entries are gone for good: a snapshot naming one again is stale, and a
        // resend of one is a new entry.
        assert_eq!(log.compact("a".into(), snapshot(3, &[("a", 2)], 10)), Compacted::Stale);
        // A later snapshot may cover an earlier one.
        assert_eq!(log.compact("c".into(), snapshot(2, &[("a", 1), ("b", 9), ("c", 1)], 16)), Compacted::Replaced);
        assert_eq!(log.entries().len(), 1);
        assert_eq!(log.bytes(), 16);
    }
}

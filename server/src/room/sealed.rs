//! The board of a sealed room: an ordered log of opaque entries, sans-IO.
//!
//! In a sealed room the server holds no yrs document. Its members seal their board updates
//! under a key the server never sees (`docs/PROTOCOL.md` §13); the server keeps the entries in
//! the order it received them, hands the whole log to newcomers and forwards each new entry to
//! the room's readers. It reads only an entry's header: the sender it stamped, the sequence
//! number, the kind and the size. Who may append is decided before, by the room machine, from
//! the sender's identity and the room's state ([`balint_proto::rules::may_write`]).
//!
//! With several nodes, each node keeps its own copy of the log, and the copies converge as
//! sets: a log holds every entry any node accepted, minus the entries some snapshot covers
//! (the ids a snapshot replaced are remembered, so that a covered entry arriving late is
//! dropped). Order is each node's arrival order and may differ between nodes; clients apply
//! entries in any order, as Yjs updates commute. A node catches up by sending a [`Summary`] of
//! the ids it knows, as ranges of sequence numbers per sender, and gets back what it lacks.

use std::collections::{BTreeMap, HashSet};

use balint_proto::sealed::{self, Entry, SnapshotUpload};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
    /// The ids a snapshot replaced, here or on another node: such an entry is never logged
    /// again.
    covered: HashSet<(String, u64)>,
    /// The sum of the entries' ciphertext lengths: what the board size limit applies to.
    bytes: usize,
    limit: usize,
    /// Counts the changes to the entries and the covered ids: what a save must catch up with.
    changes: u64,
}

impl SealedLog {
    /// An empty log that holds at most `limit` bytes of ciphertext.
    pub fn with_limit(limit: usize) -> Self {
        SealedLog { limit, ..SealedLog::default() }
    }

    /// Offers an entry, stamped with its sender, to the log.
    pub fn append(&mut self, entry: Entry) -> Appended {
        let id = (entry.sender.clone(), entry.sealed.seq);
        if self.knows(&id) {
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
        self.changes += 1;
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
        for id in covered {
            self.ids.remove(&id);
            self.covered.insert(id);
        }
        self.ids.insert(id);
        self.bytes = bytes;
        self.changes += 1;
        Compacted::Replaced
    }

    /// Whether the log holds the entry `id` or a snapshot replaced it.
    pub fn knows(&self, id: &(String, u64)) -> bool {
        self.ids.contains(id) || self.covered.contains(id)
    }

    /// Adds an entry another node accepted, unless this log knows it (holds it, or a snapshot
    /// replaced it). Returns the frame that forwards it to the readers when it was added. The
    /// size limit is not applied: the node that accepted it did, and refusing it here would
    /// leave the nodes with different logs.
    pub fn append_remote(&mut self, entry: Entry) -> Option<Bytes> {
        let id = (entry.sender.clone(), entry.sealed.seq);
        if self.knows(&id) {
            return None;
        }
        let frame = sealed::encode_entry(&entry);
        self.bytes = self.bytes.saturating_add(entry.sealed.ciphertext.len());
        self.ids.insert(id);
        self.entries.push(entry);
        self.changes += 1;
        Some(frame)
    }

    /// Applies a snapshot another node accepted: the covered entries this log holds go, the
    /// covered ids are remembered, and the snapshot takes the place of the earliest covered
    /// entry held here (at the end when none is), unless this log knows it already. Returns
    /// the frame that forwards the snapshot to the readers when it was added: they may lack
    /// some of what it covers (entries this node never had, or that it dropped on learning
    /// from a catch-up that a snapshot covers them).
    pub fn compact_remote(&mut self, sender: String, upload: SnapshotUpload) -> Option<Bytes> {
        let id = (sender, upload.sealed.seq);
        let place = self.cover(upload.covers);
        if self.knows(&id) {
            return None;
        }
        let entry = Entry { sender: id.0.clone(), sealed: upload.sealed };
        let frame = sealed::encode_entry(&entry);
        self.bytes = self.bytes.saturating_add(entry.sealed.ciphertext.len());
        self.ids.insert(id);
        self.entries.insert(place.unwrap_or(self.entries.len()), entry);
        self.changes += 1;
        Some(frame)
    }

    /// Removes the held entries among `ids` and remembers them all as covered. Returns where
    /// the earliest removed entry stood.
    fn cover(&mut self, ids: impl IntoIterator<Item = (String, u64)>) -> Option<usize> {
        let mut removed = HashSet::new();
        for id in ids {
            if self.ids.remove(&id) {
                removed.insert(id.clone());
            }
            if self.covered.insert(id) {
                self.changes += 1;
            }
        }
        if removed.is_empty() {
            return None;
        }
        let place = self.entries.iter().position(|e| removed.contains(&(e.sender.clone(), e.sealed.seq)));
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let gone = removed.contains(&(e.sender.clone(), e.sealed.seq));
            if gone {
                *bytes -= e.sealed.ciphertext.len();
            }
            !gone
        });
        place
    }

    /// What this log knows, for a catch-up request: the ids it holds or that a snapshot
    /// replaced, and the replaced ones apart.
    pub fn summary(&self) -> Summary {
        Summary { known: Ranges::of(self.ids.iter().chain(&self.covered)), covered: Ranges::of(&self.covered) }
    }

    /// Learns from another node's summary which entries snapshots replaced there.
    pub fn learn(&mut self, summary: &Summary) {
        self.cover(summary.covered.ids());
    }

    /// The entries this log holds that `summary` does not know, in order.
    pub fn lacking(&self, summary: &Summary) -> Vec<&Entry> {
        self.entries.iter().filter(|e| !summary.known.contains(&e.sender, e.sealed.seq)).collect()
    }

    /// The ids snapshots replaced, as ranges.
    pub fn covered(&self) -> Ranges {
        Ranges::of(&self.covered)
    }

    /// Applies a catch-up reply: the entries `covered` names go, then the `entries` this log
    /// does not know are added. Returns the frames that forward the added ones.
    pub fn apply_reply(&mut self, covered: &Ranges, entries: Vec<Entry>) -> Vec<Bytes> {
        self.cover(covered.ids());
        entries.into_iter().filter_map(|e| self.append_remote(e)).collect()
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

    /// How many changes the log has seen: it changed when this did.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The log as a persistent sealed room keeps it in the board store: its entries (a `0x42`
    /// log frame) and the ids snapshots replaced, opaque but for the headers, as on the bus.
    pub fn encode_stored(&self) -> Bytes {
        let stored = StoredLog { format: STORED_FORMAT, log: self.log_frame().to_vec(), covered: self.covered() };
        Bytes::from(postcard::to_allocvec(&stored).unwrap_or_default())
    }

    /// A log from what [`SealedLog::encode_stored`] wrote, holding at most `limit` bytes of
    /// ciphertext from now on (what it holds already stays, even beyond); `None` when the
    /// bytes do not decode.
    pub fn from_stored(bytes: &[u8], limit: usize) -> Option<SealedLog> {
        let stored: StoredLog = postcard::from_bytes(bytes).ok()?;
        if stored.format != STORED_FORMAT {
            return None;
        }
        let Ok(sealed::Frame::Log(entries)) = sealed::decode(&stored.log) else { return None };
        let mut log = SealedLog::with_limit(limit);
        log.covered.extend(stored.covered.ids());
        for entry in entries {
            log.append_remote(entry);
        }
        Some(log)
    }
}

/// The format of a stored sealed log; a later format takes another number.
const STORED_FORMAT: u8 = 1;

/// A sealed log as stored (postcard).
#[derive(Serialize, Deserialize)]
struct StoredLog {
    format: u8,
    /// A `0x42` log frame.
    log: Vec<u8>,
    covered: Ranges,
}

/// Sets of `(sender, seq)` ids as inclusive ranges of sequence numbers per sender. A
/// client's numbers run on from 1 within each session's epoch (`docs/PROTOCOL.md` §13), so a
/// set of ids takes one range per sender and session, plus one per gap: at most one per id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges(Vec<(String, Vec<(u64, u64)>)>);

/// The most ids one catch-up expands ranges into: far beyond a real room's entries, so that a
/// damaged range costs no more than that.
const MAX_RANGE_IDS: u64 = 1 << 20;

impl Ranges {
    /// The ranges of `ids`.
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a (String, u64)>) -> Ranges {
        let mut by_sender: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (sender, seq) in ids {
            by_sender.entry(sender).or_default().push(*seq);
        }
        let ranges = by_sender
            .into_iter()
            .map(|(sender, mut seqs)| {
                seqs.sort_unstable();
                seqs.dedup();
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for seq in seqs {
                    match ranges.last_mut() {
                        Some((_, end)) if end.checked_add(1) == Some(seq) => *end = seq,
                        _ => ranges.push((seq, seq)),
                    }
                }
                (sender.to_owned(), ranges)
            })
            .collect();
        Ranges(ranges)
    }

    /// Whether the set holds `(sender, seq)`.
    pub fn contains(&self, sender: &str, seq: u64) -> bool {
        let Ok(at) = self.0.binary_search_by(|(s, _)| s.as_str().cmp(sender)) else { return false };
        let ranges = &self.0[at].1;
        let after = ranges.partition_point(|(start, _)| *start <= seq);
        after > 0 && ranges[after - 1].1 >= seq
    }

    /// Every id of the set, at most [`MAX_RANGE_IDS`] of them.
    pub fn ids(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.0
            .iter()
            .flat_map(|(sender, ranges)| {
                ranges.iter().flat_map(move |&(start, end)| (start..=end).map(move |seq| (sender.clone(), seq)))
            })
            .take(MAX_RANGE_IDS as usize)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a log knows, sent with a catch-up request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The ids the log holds or knows replaced.
    pub known: Ranges,
    /// The ids it knows replaced by a snapshot.
    pub covered: Ranges,
}

impl Summary {
    /// The summary's bytes on the bus.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// A summary from its bytes; `None` when they do not decode.
    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        postcard::from_bytes(bytes).ok()
    }
}

impl Ranges {
    /// The set's bytes on the bus.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// A set from its bytes; `None` when they do not decode.
    pub fn decode(bytes: &[u8]) -> Option<Ranges> {
        postcard::from_bytes(bytes).ok()
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

    fn ids(log: &SealedLog) -> Vec<(String, u64)> {
        log.entries().iter().map(|e| (e.sender.clone(), e.sealed.seq)).collect()
    }

    #[test]
    fn a_stored_log_loads_with_its_entries_in_order_and_what_snapshots_replaced() {
        let mut log = SealedLog::with_limit(1000);
        for (sender, seq) in [("a", 1), ("b", 1), ("a", 2), ("c", 7)] {
            log.append(entry(sender, seq, 20));
        }
        assert_eq!(log.compact("b".into(), snapshot(2, &[("a", 1), ("b", 1)], 30)), Compacted::Replaced);
        let loaded = SealedLog::from_stored(&log.encode_stored(), 1000).expect("it loads");
        assert_eq!(loaded.log_frame(), log.log_frame());
        assert_eq!(loaded.bytes(), log.bytes());
        assert!(loaded.knows(&("a".into(), 1)), "a replaced entry stays known");
        assert!(SealedLog::from_stored(b"not a log", 1000).is_none());
        assert!(
            SealedLog::from_stored(&SealedLog::default().encode_stored(), 10).is_some_and(|l| l.entries().is_empty())
        );
    }

    #[test]
    fn remote_entries_and_snapshots_converge_as_sets_whatever_their_order() {
        // A snapshot on one node covers entries another node has not seen yet.
        let mut here = SealedLog::with_limit(1000);
        here.append(entry("a", 1, 20));
        assert!(here.compact_remote("b".into(), snapshot(5, &[("a", 1), ("a", 2)], 30)).is_some());
        assert_eq!(ids(&here), [("b".into(), 5)]);
        assert_eq!(here.append_remote(entry("a", 2, 20)), None, "a covered entry arriving late is dropped");
        assert_eq!(here.append(entry("a", 2, 20)), Appended::Duplicate);
        assert_eq!(here.compact_remote("b".into(), snapshot(5, &[("a", 1)], 30)), None, "known already");
        // The same entries the other way round: the same set.
        let mut there = SealedLog::with_limit(1000);
        there.append_remote(entry("a", 2, 20));
        there.compact_remote("b".into(), snapshot(5, &[("a", 1), ("a", 2)], 30));
        there.append_remote(entry("a", 1, 20));
        assert_eq!(ids(&there), ids(&here));
        assert_eq!(there.bytes(), here.bytes());
        // A node that lacks everything learns it from a catch-up.
        let mut empty = SealedLog::with_limit(1000);
        empty.append_remote(entry("a", 1, 20));
        let summary = Summary::decode(&empty.summary().encode()).expect("it decodes");
        here.learn(&summary);
        let lacking: Vec<Entry> = here.lacking(&summary).into_iter().cloned().collect();
        let covered = Ranges::decode(&here.covered().encode()).expect("it decodes");
        assert_eq!(empty.apply_reply(&covered, lacking).len(), 1);
        assert_eq!(ids(&empty), ids(&here));
    }

    #[test]
    fn ranges_hold_exactly_their_ids() {
        let ids = [
            ("a".to_owned(), 1),
            ("a".to_owned(), 2),
            ("a".to_owned(), 3),
            ("a".to_owned(), 7),
            ("b".to_owned(), u64::MAX),
        ];
        let ranges = Ranges::of(&ids);
        assert_eq!(ranges.0, [("a".to_owned(), vec![(1, 3), (7, 7)]), ("b".to_owned(), vec![(u64::MAX, u64::MAX)])]);
        for seq in 0..10 {
            assert_eq!(ranges.contains("a", seq), [1, 2, 3, 7].contains(&seq), "{seq}");
        }
        assert!(ranges.contains("b", u64::MAX) && !ranges.contains("c", 1));
        assert_eq!(ranges.ids().collect::<Vec<_>>(), ids);
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
        // resend of one is dropped.
        assert_eq!(log.compact("a".into(), snapshot(3, &[("a", 2)], 10)), Compacted::Stale);
        assert_eq!(log.append(entry("a", 2, 20)), Appended::Duplicate);
        // A later snapshot may cover an earlier one.
        assert_eq!(log.compact("c".into(), snapshot(2, &[("a", 1), ("b", 9), ("c", 1)], 16)), Compacted::Replaced);
        assert_eq!(log.entries().len(), 1);
        assert_eq!(log.bytes(), 16);
    }
}

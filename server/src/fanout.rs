//! The messages nodes exchange on a room's bus channel.
//!
//! A bus message is one byte, [`FORMAT`], then the sender's node id and its envelopes, in
//! order, encoded with `postcard` (serde's data model: a length before each string and byte
//! string, a variant index before each envelope). The node id lets a node skip its own
//! messages, and lets a catch-up reply name the node that asked. Board updates and awareness
//! are the y-sync payloads as they are; they cross Redis only inside these pub/sub messages.
//!
//! Envelopes queued together go as one message. Decoding borrows: every payload of the
//! decoded envelopes is a slice of the received message, never a copy.

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

/// The first byte of every bus message. The builds before this one began their messages with
/// a kind from 1 to 6 and ignore any other, so nodes of different builds ignore each other's
/// messages rather than misread them; a future format takes another number.
const FORMAT: u8 = 7;

/// What travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A board update (Yjs v1), applied on the sending node.
    Update(Bytes),
    /// An awareness update (y-sync encoding), applied on the sending node.
    Awareness(Bytes),
    /// "Send me what I lack": the sender's state vector (Yjs v1). With `mutual`, the
    /// receivers also ask the sender for what they lack, so that edits made on both sides
    /// while the bus was down cross in both directions.
    SyncRequest {
        /// The sender's state vector.
        state_vector: Bytes,
        /// Whether receivers should ask back.
        mutual: bool,
    },
    /// The answer to a catch-up request, for node `to` only.
    SyncReply {
        /// The node that asked.
        to: String,
        /// What it lacks (Yjs v1 update).
        update: Bytes,
    },
    /// A new version of the room's record, written by compare-and-set.
    State {
        /// The version written.
        version: u64,
        /// The record.
        record: Bytes,
    },
    /// A sealed room's entry, accepted (a board update) or forwarded (awareness) on the
    /// sending node: a `0x41` sealed frame, opaque but for its header.
    SealedEntry(Bytes),
    /// A sealed room's snapshot, accepted on the sending node from `sender`.
    SealedSnapshot {
        /// The uploader's member id.
        sender: String,
        /// The `0x43` snapshot frame: the covered ids and the sealed snapshot.
        upload: Bytes,
    },
    /// A sealed room's "send me what I lack": what the sender's log knows (a postcard-encoded
    /// `room::sealed::Summary`). With `mutual`, the receivers ask back.
    SealedSyncRequest {
        /// The summary of the sender's log.
        summary: Bytes,
        /// Whether receivers should ask back.
        mutual: bool,
    },
    /// The answer to a sealed catch-up request, for node `to` only.
    SealedSyncReply {
        /// The node that asked.
        to: String,
        /// The entries it lacks: a `0x42` log frame.
        log: Bytes,
        /// The ids snapshots replaced on the answering node (a postcard-encoded
        /// `room::sealed::Ranges`).
        covered: Bytes,
    },
}

impl Envelope {
    /// The size of its payloads in bytes, about what it adds to a message.
    pub fn body_len(&self) -> usize {
        match self {
            Envelope::Update(b) | Envelope::Awareness(b) => b.len(),
            Envelope::SyncRequest { state_vector, .. } => state_vector.len() + 1,
            Envelope::SyncReply { to, update } => to.len() + 1 + update.len(),
            Envelope::State { record, .. } => record.len() + 8,
            Envelope::SealedEntry(frame) => frame.len(),
            Envelope::SealedSnapshot { sender, upload } => sender.len() + 1 + upload.len(),
            Envelope::SealedSyncRequest { summary, .. } => summary.len() + 1,
            Envelope::SealedSyncReply { to, log, covered } => to.len() + 1 + log.len() + 4 + covered.len(),
        }
    }

    fn wire(&self) -> Wire<'_> {
        match self {
            Envelope::Update(update) => Wire::Update(update),
            Envelope::Awareness(payload) => Wire::Awareness(payload),
            Envelope::SyncRequest { state_vector, mutual } => Wire::SyncRequest { state_vector, mutual: *mutual },
            Envelope::SyncReply { to, update } => Wire::SyncReply { to, update },
            Envelope::State { version, record } => Wire::State { version: *version, record },
            Envelope::SealedEntry(frame) => Wire::SealedEntry(frame),
            Envelope::SealedSnapshot { sender, upload } => Wire::SealedSnapshot { sender, upload },
            Envelope::SealedSyncRequest { summary, mutual } => Wire::SealedSyncRequest { summary, mutual: *mutual },
            Envelope::SealedSyncReply { to, log, covered } => Wire::SealedSyncReply { to, log, covered },
        }
    }
}

/// A bus message as encoded, borrowing its payloads.
#[derive(Serialize, Deserialize)]
struct Message<'a> {
    node: &'a str,
    #[serde(borrow)]
    envelopes: Vec<Wire<'a>>,
}

/// An [`Envelope`] as encoded. The variants' order is the format: add new ones at the end.
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    Update(#[serde(serialize_with = "byte_string")] &'a [u8]),
    Awareness(#[serde(serialize_with = "byte_string")] &'a [u8]),
    SyncRequest {
        #[serde(serialize_with = "byte_string")]
        state_vector: &'a [u8],
        mutual: bool,
    },
    SyncReply {
        to: &'a str,
        #[serde(serialize_with = "byte_string")]
        update: &'a [u8],
    },
    State {
        version: u64,
        #[serde(serialize_with = "byte_string")]
        record: &'a [u8],
    },
    SealedEntry(#[serde(serialize_with = "byte_string")] &'a [u8]),
    SealedSnapshot {
        sender: &'a str,
        #[serde(serialize_with = "byte_string")]
        upload: &'a [u8],
    },
    SealedSyncRequest {
        #[serde(serialize_with = "byte_string")]
        summary: &'a [u8],
        mutual: bool,
    },
    SealedSyncReply {
        to: &'a str,
        #[serde(serialize_with = "byte_string")]
        log: &'a [u8],
        #[serde(serialize_with = "byte_string")]
        covered: &'a [u8],
    },
}

/// Writes a payload as one byte string (serde would write a `&[u8]` byte by byte, as a
/// sequence); it reads back as a slice borrowed from the message.
fn byte_string<S: Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Encodes `envelope` as sent by `node`.
pub fn encode(node: &str, envelope: &Envelope) -> Bytes {
    encode_batch(node, std::slice::from_ref(envelope))
}

/// Encodes `envelopes` (in order) as one bus message sent by `node`.
pub fn encode_batch(node: &str, envelopes: &[Envelope]) -> Bytes {
    let message = Message { node, envelopes: envelopes.iter().map(Envelope::wire).collect() };
    // Room for the payloads and their lengths, so the buffer is written once, never regrown.
    let size = 1 + 10 + node.len() + envelopes.iter().map(|e| 12 + e.body_len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(FORMAT);
    // Writing to a `Vec` cannot fail, and every type here serializes.
    Bytes::from(postcard::to_extend(&message, out).unwrap_or_default())
}

/// The bytes every bus message sent by `node` begins with: [`FORMAT`] and the node id as
/// postcard writes it (its length, then its bytes). No other node's messages begin with them,
/// as a node id's length comes before it: a node can tell its own messages, which Redis sends
/// back to it, without decoding them.
pub fn sender_prefix(node: &str) -> Bytes {
    // Writing to a `Vec` cannot fail.
    Bytes::from(postcard::to_extend(node, vec![FORMAT]).unwrap_or_default())
}

/// Decodes a bus message into its sender and envelopes, in order; `None` for anything
/// malformed (a message with one bad envelope is refused whole).
pub fn decode(payload: Bytes) -> Option<(String, Vec<Envelope>)> {
    let (&format, body) = payload.split_first()?;
    if format != FORMAT {
        return None;
    }
    let (message, rest) = postcard::take_from_bytes::<Message<'_>>(body).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let slice = |bytes: &[u8]| payload.slice_ref(bytes);
    let envelopes = message
        .envelopes
        .into_iter()
        .map(|wire| match wire {
            Wire::Update(update) => Envelope::Update(slice(update)),
            Wire::Awareness(update) => Envelope::Awareness(slice(update)),
            Wire::SyncRequest { state_vector, mutual } => {
                Envelope::SyncRequest { state_vector: slice(state_vector), mutual }
            }
            Wire::SyncReply { to, update } => Envelope::SyncReply { to: to.to_owned(), update: slice(update) },
            Wire::State { version, record } => Envelope::State { version, record: slice(record) },
            Wire::SealedEntry(frame) => Envelope::SealedEntry(slice(frame)),
            Wire::SealedSnapshot { sender, upload } => {
                Envelope::SealedSnapshot { sender: sender.to_owned(), upload: slice(upload) }
            }
            Wire::SealedSyncRequest { summary, mutual } => {
                Envelope::SealedSyncRequest { summary: slice(summary), mutual }
            }
            Wire::SealedSyncReply { to, log, covered } => {
                Envelope::SealedSyncReply { to: to.to_owned(), log: slice(log), covered: slice(covered) }
            }
        })
        .collect();
    Some((message.node.to_owned(), envelopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> [Envelope; 9] {
        [
            Envelope::Update(Bytes::from_static(b"u")),
            Envelope::Awareness(Bytes::from_static(b"a")),
            Envelope::SyncRequest { state_vector: Bytes::from_static(b"sv"), mutual: true },
            Envelope::SyncReply { to: "n2".into(), update: Bytes::from_static(b"diff") },
            Envelope::State { version: 42, record: Bytes::from_static(b"{}") },
            Envelope::SealedEntry(Bytes::from_static(b"\x41entry")),
            Envelope::SealedSnapshot { sender: "m1".into(), upload: Bytes::from_static(b"\x43snap") },
            Envelope::SealedSyncRequest { summary: Bytes::from_static(b"ids"), mutual: false },
            Envelope::SealedSyncReply {
                to: "n3".into(),
                log: Bytes::from_static(b"\x42log"),
                covered: Bytes::from_static(b"ranges"),
            },
        ]
    }

    #[test]
    fn every_envelope_round_trips() {
        for envelope in cases() {
            assert_eq!(decode(encode("node1", &envelope)), Some(("node1".to_owned(), vec![envelope])));
        }
        // Several at once go as one message and come back in order.
        let cases = cases();
        assert_eq!(decode(encode_batch("node1", &cases)), Some(("node1".to_owned(), cases.to_vec())));
        assert_eq!(decode(encode_batch("node1", &[])), Some(("node1".to_owned(), vec![])));
        // Empty payloads and long node ids too.
        let long = "n".repeat(300);
        let empty = Envelope::SyncReply { to: long.clone(), update: Bytes::new() };
        assert_eq!(decode(encode(&long, &empty)), Some((long, vec![empty])));
    }

    #[test]
    fn decoded_payloads_are_slices_of_the_message() {
        let update = Bytes::from(vec![7u8; 4096]);
        let message = encode_batch("node1", &[Envelope::Update(update.clone()), Envelope::Awareness(update.clone())]);
        let range = message.as_ptr_range();
        let (_, envelopes) = decode(message.clone()).unwrap();
        for envelope in envelopes {
            let (Envelope::Update(payload) | Envelope::Awareness(payload)) = envelope else { panic!("{envelope:?}") };
            assert_eq!(payload, update);
            assert!(range.contains(&payload.as_ptr()), "the payload is borrowed from the message, not copied");
        }
        // The message is written once: its buffer was sized for it.
        assert!(message.len() < 2 * 4096 + 64);
    }

    #[test]
    fn a_nodes_own_messages_begin_with_its_prefix_and_no_others_do() {
        let nodes = ["n", "n1", "n12", "a-node-id", &"x".repeat(200), &"x".repeat(201)];
        for sender in nodes {
            for envelopes in [&cases()[..], &[], &cases()[3..4]] {
                let message = encode_batch(sender, envelopes);
                for node in nodes {
                    let own = message.starts_with(&sender_prefix(node));
                    assert_eq!(own, node == sender, "{node} reading a message of {sender}");
                    assert_eq!(own, decode(message.clone()).unwrap().0 == node);
                }
            }
        }
    }

    #[test]
    fn a_damaged_message_is_refused_whole() {
        let message = encode_batch("n", &cases());
        for cut in 0..message.len() {
            assert_eq!(decode(message.slice(..cut)), None, "cut at {cut}");
        }
        let longer = [&message[..], b"x"].concat();
        assert_eq!(decode(Bytes::from(longer)), None, "trailing bytes");
        let mut other_format = message.to_vec();
        other_format[0] = FORMAT + 1;
        assert_eq!(decode(Bytes::from(other_format)), None, "another format");
        let mut bad_variant = encode("n", &Envelope::Update(Bytes::from_static(b"u"))).to_vec();
        bad_variant[4] = 13;
        assert_eq!(decode(Bytes::from(bad_variant)), None, "an unknown envelope");
    }

    #[test]
    fn garbage_and_the_previous_format_are_ignored() {
        assert_eq!(decode(Bytes::new()), None);
        // Messages of the hand-written format of earlier builds: a state and a batch.
        assert_eq!(decode(Bytes::from_static(&[5, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 1, b'{', b'}'])), None);
        assert_eq!(decode(Bytes::from_static(&[6, 1, b'n', 0, 0, 0, 0])), None);
        // A count of envelopes far beyond the bytes that follow, and a node id that is not UTF-8.
        assert_eq!(decode(Bytes::from_static(&[FORMAT, 1, b'n', 0xff, 0xff, 0xff, 0xff, 0x0f])), None);
        assert_eq!(decode(Bytes::from_static(&[FORMAT, 1, 0xff, 0])), None);
        // Pseudo-random bytes after the format byte, none a panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000 {
            let bytes: Vec<u8> = std::iter::once(FORMAT)
                .chain((0..len % 64).map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                }))
                .collect();
            let _ = decode(Bytes::from(bytes));
        }
    }
}

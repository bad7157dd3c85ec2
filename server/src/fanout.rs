//! The messages nodes exchange on a room's bus channel.
//!
//! A message is `[kind][node id length][node id][body]`. The node id lets a node skip its own
//! messages, and lets a catch-up reply name the node that asked. Board updates and awareness
//! are the y-sync payloads as they are; they cross Redis only inside these pub/sub messages.
//!
//! Envelopes queued together go as one batch: `[6][node id length][node id][count]` followed
//! by each envelope's own `[kind][body]`, prefixed with its length (count and lengths are u32,
//! big-endian). A batch of one is sent as the plain envelope.

use bytes::{BufMut, Bytes, BytesMut};

const UPDATE: u8 = 1;
const AWARENESS: u8 = 2;
const SYNC_REQUEST: u8 = 3;
const SYNC_REPLY: u8 = 4;
const STATE: u8 = 5;
const BATCH: u8 = 6;

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
}

impl Envelope {
    /// The size of its body in bytes, as encoded.
    pub fn body_len(&self) -> usize {
        match self {
            Envelope::Update(b) | Envelope::Awareness(b) => b.len(),
            Envelope::SyncRequest { state_vector, .. } => state_vector.len() + 1,
            Envelope::SyncReply { to, update } => to.len() + 1 + update.len(),
            Envelope::State { record, .. } => record.len() + 8,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Envelope::Update(_) => UPDATE,
            Envelope::Awareness(_) => AWARENESS,
            Envelope::SyncRequest { .. } => SYNC_REQUEST,
            Envelope::SyncReply { .. } => SYNC_REPLY,
            Envelope::State { .. } => STATE,
        }
    }
}

/// Encodes `envelope` as sent by `node`.
pub fn encode(node: &str, envelope: &Envelope) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + node.len() + envelope.body_len());
    out.put_u8(envelope.kind());
    put_short(&mut out, node.as_bytes());
    put_body(&mut out, envelope);
    out.freeze()
}

/// Encodes `envelopes` (in order) as one bus message sent by `node`.
pub fn encode_batch(node: &str, envelopes: &[Envelope]) -> Bytes {
    if let [one] = envelopes {
        return encode(node, one);
    }
    let size: usize = envelopes.iter().map(|e| 5 + e.body_len()).sum();
    let mut out = BytesMut::with_capacity(6 + node.len() + size);
    out.put_u8(BATCH);
    put_short(&mut out, node.as_bytes());
    out.put_u32(u32::try_from(envelopes.len()).unwrap_or(u32::MAX));
    for envelope in envelopes {
        out.put_u32(u32::try_from(1 + envelope.body_len()).unwrap_or(u32::MAX));
        out.put_u8(envelope.kind());
        put_body(&mut out, envelope);
    }
    out.freeze()
}

fn put_body(out: &mut BytesMut, envelope: &Envelope) {
    match envelope {
        Envelope::Update(b) | Envelope::Awareness(b) => out.put_slice(b),
        Envelope::SyncRequest { state_vector, mutual } => {
            out.put_u8(u8::from(*mutual));
            out.put_slice(state_vector);
        }
        Envelope::SyncReply { to, update } => {
            put_short(out, to.as_bytes());
            out.put_slice(update);
        }
        Envelope::State { version, record } => {
            out.put_u64(*version);
            out.put_slice(record);
        }
    }
}

fn put_short(out: &mut BytesMut, bytes: &[u8]) {
    // Node ids are short ASCII strings of our own making.
    let len = bytes.len().min(255);
    out.put_u8(len as u8);
    out.put_slice(&bytes[..len]);
}

fn take_short(payload: &mut Bytes) -> Option<String> {
    let len = *payload.first()? as usize;
    if payload.len() < 1 + len {
        return None;
    }
    let bytes = payload.split_to(1 + len);
    String::from_utf8(bytes[1..].to_vec()).ok()
}

/// Decodes a bus message into its sender and envelopes, in order; `None` for anything
/// malformed (a batch with one bad envelope is refused whole).
pub fn decode(mut payload: Bytes) -> Option<(String, Vec<Envelope>)> {
    if payload.is_empty() {
        return None;
    }
    let kind = payload.split_to(1)[0];
    let node = take_short(&mut payload)?;
    if kind != BATCH {
        return Some((node, vec![body(kind, payload)?]));
    }
    if payload.len() < 4 {
        return None;
    }
    let count = u32::from_be_bytes(payload.split_to(4)[..].try_into().ok()?) as usize;
    // Each envelope takes at least five bytes: a bogus count cannot reserve much.
    let mut envelopes = Vec::with_capacity(count.min(payload.len() / 5));
    for _ in 0..count {
        if payload.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes(payload.split_to(4)[..].try_into().ok()?) as usize;
        if len == 0 || payload.len() < len {
            return None;
        }
        let mut item = payload.split_to(len);
        let kind = item.split_to(1)[0];
        if kind == BATCH {
            return None;
        }
        envelopes.push(body(kind, item)?);
    }
    if !payload.is_empty() {
        return None;
    }
    Some((node, envelopes))
}

fn body(kind: u8, mut payload: Bytes) -> Option<Envelope> {
    Some(match kind {
        UPDATE => Envelope::Update(payload),
        AWARENESS => Envelope::Awareness(payload),
        SYNC_REQUEST => {
            if payload.is_empty() {
                return None;
            }
            let mutual = payload.split_to(1)[0] == 1;
            Envelope::SyncRequest { state_vector: payload, mutual }
        }
        SYNC_REPLY => {
            let to = take_short(&mut payload)?;
            Envelope::SyncReply { to, update: payload }
        }
        STATE => {
            if payload.len() < 8 {
                return None;
            }
            let version = u64::from_be_bytes(payload.split_to(8)[..].try_into().ok()?);
            Envelope::State { version, record: payload }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_envelope_round_trips() {
        let cases = [
            Envelope::Update(Bytes::from_static(b"u")),
            Envelope::Awareness(Bytes::from_static(b"a")),
            Envelope::SyncRequest { state_vector: Bytes::from_static(b"sv"), mutual: true },
            Envelope::SyncReply { to: "n2".into(), update: Bytes::from_static(b"diff") },
            Envelope::State { version: 42, record: Bytes::from_static(b"{}") },
        ];
        for envelope in cases.clone() {
            assert_eq!(decode(encode("node1", &envelope)), Some(("node1".to_owned(), vec![envelope])));
        }
        // Several at once go as one batch and come back in order.
        let batch = encode_batch("node1", &cases);
        assert_eq!(batch[0], BATCH);
        assert_eq!(decode(batch), Some(("node1".to_owned(), cases.to_vec())));
        // A batch of one is the plain envelope.
        assert_eq!(encode_batch("node1", &cases[..1]), encode("node1", &cases[0]));
    }

    #[test]
    fn a_damaged_batch_is_refused_whole() {
        let cases = [Envelope::Update(Bytes::from_static(b"u1")), Envelope::Update(Bytes::from_static(b"u2"))];
        let batch = encode_batch("n", &cases);
        for cut in 1..batch.len() {
            assert_eq!(decode(batch.slice(..cut)), None, "cut at {cut}");
        }
        let longer = [&batch[..], b"x"].concat();
        assert_eq!(decode(Bytes::from(longer)), None, "trailing bytes");
        let nested = [&[BATCH, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 7][..], &[BATCH, 1, b'n', 0, 0, 0, 0][..]].concat();
        assert_eq!(decode(Bytes::from(nested)), None, "no batch inside a batch");
    }

    #[test]
    fn malformed_messages_are_ignored() {
        assert_eq!(decode(Bytes::new()), None);
        assert_eq!(decode(Bytes::from_static(&[9, 0])), None);
        assert_eq!(decode(Bytes::from_static(&[STATE, 1, b'n', 0, 0])), None);
        assert_eq!(decode(Bytes::from_static(&[UPDATE, 10, b'n'])), None);
    }
}

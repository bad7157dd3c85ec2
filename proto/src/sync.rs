//! The y-sync codec for binary frames.
//!
//! The message types themselves are yrs's own ([`yrs::sync::Message`]); this module adds the
//! strict framing a server needs on untrusted input. A frame holds one or more messages back to
//! back. [`decode_frame`] refuses a frame that ends inside a message (yrs's `MessageReader`
//! would silently stop there), a message type outside the four of the standard protocol, and
//! an update payload that is not a well-formed Yjs v1 update.
//!
//! The encoders return [`Bytes`], so one encoding of a broadcast can be shared by every
//! recipient.

use bytes::Bytes;
use yrs::encoding::read::{self, Cursor, Read};
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{StateVector, Update};

pub use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
pub use yrs::sync::{Message, SyncMessage};

/// Tag of a sync message (step 1, step 2 or update).
pub const MSG_SYNC: u32 = 0;
/// Tag of an awareness message.
pub const MSG_AWARENESS: u32 = 1;
/// Tag of an auth message.
pub const MSG_AUTH: u32 = 2;
/// Tag of a query-awareness message.
pub const MSG_QUERY_AWARENESS: u32 = 3;

/// Why a binary frame was refused. The text is safe to show to a client: it never quotes the
/// frame's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame carried no bytes at all.
    #[error("empty y-sync frame")]
    Empty,
    /// The frame ended in the middle of a message.
    #[error("truncated y-sync message")]
    Truncated,
    /// A message did not decode as the y-sync protocol says it must.
    #[error("malformed y-sync message")]
    Malformed,
    /// The message type is not one of sync, awareness, auth or query-awareness.
    #[error("unknown y-sync message type {0}")]
    UnknownType(u32),
}

impl From<read::Error> for FrameError {
    fn from(e: read::Error) -> Self {
        match e {
            read::Error::EndOfBuffer(_) => FrameError::Truncated,
            _ => FrameError::Malformed,
        }
    }
}

/// Decodes every message of a binary frame, refusing the whole frame on the first bad one.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Message>, FrameError> {
    if frame.is_empty() {
        return Err(FrameError::Empty);
    }
    let mut cursor = Cursor::new(frame);
    let mut messages = Vec::with_capacity(1);
    while cursor.has_content() {
        messages.push(decode_message(&mut cursor)?);
    }
    Ok(messages)
}

/// A frame that holds one sync step 2 or update message and nothing else: the common frame
/// of a live room (an edit), decoded once.
pub struct SingleUpdate<'a> {
    /// Whether the message is a sync step 2 (otherwise it is an update).
    pub is_step2: bool,
    /// The Yjs v1 update, as a slice of the frame.
    pub payload: &'a [u8],
    /// The update, decoded and checked as [`decode_update`] does.
    pub update: Update,
}

/// Decodes `frame` when it holds exactly one sync step 2 or update message, checked as
/// [`decode_frame`] checks it; `None` for any other frame (see [`decode_frame`]), which this
/// leaves unread.
pub fn decode_single_update(frame: &[u8]) -> Option<Result<SingleUpdate<'_>, FrameError>> {
    let mut cursor = Cursor::new(frame);
    let tag: u32 = cursor.read_var().ok()?;
    let kind: u32 = cursor.read_var().ok()?;
    if tag != MSG_SYNC || !matches!(kind, 1 | 2) {
        return None;
    }
    let len: usize = cursor.read_var().ok()?;
    // Exactly the rest of the frame.
    let payload = frame.get(cursor.next..).filter(|rest| rest.len() == len)?;
    Some(decode_update(payload).map(|update| SingleUpdate { is_step2: kind == 1, payload, update }))
}

/// Reads one message. The framing is read here rather than through yrs's `Message::decode`,
/// because that one cannot tell where a message ended nor refuse an unknown type.
fn decode_message(cursor: &mut Cursor<'_>) -> Result<Message, FrameError> {
    let tag: u32 = cursor.read_var()?;
    match tag {
        MSG_SYNC => {
            let kind: u32 = cursor.read_var()?;
            let payload = cursor.read_buf()?;
            match kind {
                0 => {
                    check_state_vector(payload)?;
                    Ok(Message::Sync(SyncMessage::SyncStep1(StateVector::decode_v1(payload)?)))
                }
                1 | 2 => {
                    // Validate the payload now, so a bad update is refused before any state is
                    // touched.
                    decode_update(payload)?;
                    let payload = payload.to_vec();
                    Ok(Message::Sync(if kind == 1 {
                        SyncMessage::SyncStep2(payload)
                    } else {
                        SyncMessage::Update(payload)
                    }))
                }
                _ => Err(FrameError::Malformed),
            }
        }
        MSG_AWARENESS => {
            let payload = cursor.read_buf()?;
            check_awareness(payload)?;
            Ok(Message::Awareness(AwarenessUpdate::decode_v1(payload)?))
        }
        MSG_AUTH => {
            let permission: u32 = cursor.read_var()?;
            let reason = if permission == 0 { Some(cursor.read_string()?.to_owned()) } else { None };
            Ok(Message::Auth(reason))
        }
        MSG_QUERY_AWARENESS => Ok(Message::AwarenessQuery),
        other => Err(FrameError::UnknownType(other)),
    }
}

/// Decodes a y-protocols awareness update payload (what an awareness message carries, and
/// what a sealed room's awareness entry seals), after checking its counts.
pub fn decode_awareness(payload: &[u8]) -> Result<AwarenessUpdate, FrameError> {
    check_awareness(payload)?;
    Ok(AwarenessUpdate::decode_v1(payload)?)
}

/// Decodes a Yjs v1 update payload, after checking its counts (see [`check_update`]).
///
/// The update must also survive yrs's own round trip. A document keeps what it cannot integrate
/// yet (pending) and re-encodes it into every later diff and snapshot, decoding that again
/// with an `unwrap`; an update that yrs re-encodes into bytes it cannot read back (found by
/// `cargo fuzz`: a block whose parent is itself, among others) would make every later sync
/// step 2 and save of the board panic.
///
/// The round trip costs an encoding of the update. A keystroke's update, whose shape says that
/// yrs re-encodes it into exactly its own bytes ([`re_encodes_as_is`]), is spared it: the same
/// bytes decode again (they just did).
pub fn decode_update(payload: &[u8]) -> Result<Update, FrameError> {
    check_update(payload)?;
    let update = Update::decode_v1(payload).map_err(|_| FrameError::Malformed)?;
    if !re_encodes_as_is(payload) {
        let again = update.encode_v1();
        // Other clients' edits (Yjs's among them) mostly re-encode into their own bytes too.
        if again != payload {
            Update::decode_v1(&again).map_err(|_| FrameError::Malformed)?;
        }
    }
    Ok(update)
}

/// Whether yrs (0.28) encodes the decoding of `payload`, an update that [`check_update`]
/// passed and yrs decoded, into exactly `payload`, read off its shape alone. Only the shape of
/// a keystroke qualifies, as a Yjs or yrs client writes it:
///
/// - no block section, or one (one client) of one or more blocks, each an item with a left
///   origin, a right origin or both (so no parent is written) and a non-empty string: info
///   `0x84`, `0x44` or `0xC4`; yrs writes an item's info from what it decoded, keeps every
///   such block (only empty content is dropped), and writes one client's section as read;
/// - a delete set of no client, or of one client with one or more ranges, none empty (yrs
///   keeps one client's ranges as read, in their order);
/// - every number in its shortest variable-length form, as yrs writes it, the 32-bit ones
///   within 32 bits; nothing after the delete set.
///
/// Anything else (more clients, another kind of block or content, a longer form of a number)
/// answers `false`, and the caller encodes the update to compare. A test checks the claim
/// against the yrs in use, on real edits and on mutations of them.
pub fn re_encodes_as_is(payload: &[u8]) -> bool {
    let mut cursor = Cursor::new(payload);
    keystroke_shape(&mut cursor).is_some() && remaining(&cursor) == 0
}

fn keystroke_shape(c: &mut Cursor<'_>) -> Option<()> {
    const ORIGIN: u8 = 0b1000_0000;
    const RIGHT_ORIGIN: u8 = 0b0100_0000;
    const STRING: u8 = 4;
    match shortest_var(c, U32_MAX)? {
        0 => {}
        1 => {
            let blocks = shortest_var(c, U32_MAX)?;
            shortest_var(c, MAX_CLIENT_ID)?;
            shortest_var(c, U32_MAX)?;
            if blocks == 0 {
                return None;
            }
            for _ in 0..blocks {
                let info = c.read_u8().ok()?;
                if info & ORIGIN != 0 {
                    shortest_id(c)?;
                }
                if info & RIGHT_ORIGIN != 0 {
                    shortest_id(c)?;
                }
                if !matches!(info, 0x84 | 0x44 | 0xC4) {
                    return None;
                }
                debug_assert_eq!(info & 0b1111, STRING);
                let len = shortest_var(c, U32_MAX)?;
                if len == 0 {
                    return None;
                }
                c.read_exact(usize::try_from(len).ok()?).ok()?;
            }
        }
        _ => return None,
    }
    match shortest_var(c, U32_MAX)? {
        0 => Some(()),
        1 => {
            shortest_var(c, MAX_CLIENT_ID)?;
            let ranges = shortest_var(c, U32_MAX)?;
            if ranges == 0 {
                return None;
            }
            for _ in 0..ranges {
                shortest_var(c, U32_MAX)?;
                if shortest_var(c, U32_MAX)? == 0 {
                    return None;
                }
            }
            Some(())
        }
        _ => None,
    }
}

/// The largest 32-bit number (clocks, lengths, counts), for [`shortest_var`].
const U32_MAX: u64 = u32::MAX as u64;

/// An id: client and clock.
fn shortest_id(c: &mut Cursor<'_>) -> Option<()> {
    shortest_var(c, MAX_CLIENT_ID)?;
    shortest_var(c, U32_MAX).map(drop)
}

/// Reads a variable-length unsigned number, if it is at most `max` and written in the fewest
/// bytes (seven bits a byte), as yrs writes it.
fn shortest_var(c: &mut Cursor<'_>, max: u64) -> Option<u64> {
    let start = c.next;
    let value: u64 = c.read_var().ok()?;
    let shortest = (64 - (value | 1).leading_zeros()).div_ceil(7) as usize;
    (value <= max && c.next - start == shortest).then_some(value)
}

// Bounds on what the decoders of yrs allocate.
//
// yrs reserves room for a collection from the count written before it: a few bytes can declare
// a billion entries. It reserves fallibly, but with overcommit a large reservation succeeds,
// the hash maps' control bytes are written at once, and the server's wiping allocator zeroes
// the whole block when it is freed: an 11-byte frame made a process touch gigabytes. yrs also
// decodes nested `Any` values by recursion, without a depth limit. So every count is checked
// here against the bytes that are left (each entry takes at least a byte or two), the nesting
// of `Any` values is bounded, and so are client ids (53 bits, as in Yjs) and clocks (no
// overflow), before yrs decodes anything. The walk follows yrs's v1 decoders exactly and
// refuses nothing they would accept from a Yjs client.

/// Deepest nesting of `Any` values (arrays and maps in arrays and maps) accepted.
pub const MAX_ANY_DEPTH: usize = 64;

/// Client ids are 53-bit numbers (JavaScript's safe integers).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

fn remaining(cursor: &Cursor<'_>) -> usize {
    cursor.buf.len() - cursor.next
}

/// Reads a count of entries that each take at least `min_bytes` bytes, refusing one the rest
/// of the payload cannot hold.
fn read_count(cursor: &mut Cursor<'_>, min_bytes: usize) -> Result<usize, FrameError> {
    let count: u64 = cursor.read_var()?;
    match usize::try_from(count) {
        Ok(count) if count <= remaining(cursor) / min_bytes => Ok(count),
        _ => Err(FrameError::Malformed),
    }
}

fn read_client(cursor: &mut Cursor<'_>) -> Result<(), FrameError> {
    let client: u64 = cursor.read_var()?;
    if client > MAX_CLIENT_ID {
        return Err(FrameError::Malformed);
    }
    Ok(())
}

fn read_id(cursor: &mut Cursor<'_>) -> Result<(), FrameError> {
    read_client(cursor)?;
    let _clock: u32 = cursor.read_var()?;
    Ok(())
}

/// Checks the counts of a state vector (sync step 1): `(client, clock)` pairs.
fn check_state_vector(payload: &[u8]) -> Result<(), FrameError> {
    let mut cursor = Cursor::new(payload);
    let _entries = read_count(&mut cursor, 2)?;
    Ok(())
}

/// Checks the counts of an awareness update: `(client, clock, state)` triples.
fn check_awareness(payload: &[u8]) -> Result<(), FrameError> {
    let mut cursor = Cursor::new(payload);
    let _entries = read_count(&mut cursor, 3)?;
    Ok(())
}

/// Walks a Yjs v1 update as yrs decodes it, checking every count, client id, clock and
/// nesting depth. Structure yrs would refuse is refused here too (or left for yrs to refuse).
pub fn check_update(payload: &[u8]) -> Result<(), FrameError> {
    let mut cursor = Cursor::new(payload);
    let c = &mut cursor;
    // Blocks, by client: block count, client, first clock, blocks.
    for _ in 0..read_count(c, 3)? {
        let blocks = read_count(c, 2)?;
        read_client(c)?;
        let mut clock: u32 = c.read_var()?;
        for _ in 0..blocks {
            let len = check_block(c)?;
            clock = clock.checked_add(len).ok_or(FrameError::Malformed)?;
        }
    }
    // The delete set: by client, ranges of `(clock, len)`.
    for _ in 0..read_count(c, 2)? {
        read_client(c)?;
        for _ in 0..read_count(c, 2)? {
            let clock: u32 = c.read_var()?;
            let len: u32 = c.read_var()?;
            clock.checked_add(len).ok_or(FrameError::Malformed)?;
        }
    }
    Ok(())
}

/// Checks one block and returns its length in clock units, as yrs counts it.
fn check_block(c: &mut Cursor<'_>) -> Result<u32, FrameError> {
    const GC: u8 = 0;
    const SKIP: u8 = 10;
    const HAS_ORIGIN: u8 = 0b1000_0000;
    const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
    const HAS_PARENT_SUB: u8 = 0b0010_0000;
    let info = c.read_u8()?;
    if info == GC || info == SKIP {
        return Ok(c.read_var()?);
    }
    if info & HAS_ORIGIN != 0 {
        read_id(c)?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        read_id(c)?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        let named: u32 = c.read_var()?;
        if named == 1 {
            c.read_string()?;
        } else {
            read_id(c)?;
        }
        if info & HAS_PARENT_SUB != 0 {
            c.read_string()?;
        }
    }
    match info & 0b1111 {
        // Deleted content: its length only.
        1 => Ok(c.read_var()?),
        // Legacy JSON content, which Yjs has not written since version 13 (it writes Any
        // content). yrs 0.28.1 reads one string more than the count says but writes the count
        // it holds, so a board holding such a block encodes into a snapshot that yrs cannot
        // read back: a persistent board that never loads again, a sync step 2 that Rust clients
        // cannot apply (found by `cargo fuzz`). Refused.
        2 => Err(FrameError::Malformed),
        // Binary.
        3 => {
            c.read_buf()?;
            Ok(1)
        }
        // A string, counted in UTF-16 code units.
        4 => {
            let text = c.read_string()?;
            u32::try_from(text.encode_utf16().count()).map_err(|_| FrameError::Malformed)
        }
        // Embed: a JSON string.
        5 => {
            c.read_string()?;
            Ok(1)
        }
        // Format: a key and a JSON string.
        6 => {
            c.read_string()?;
            c.read_string()?;
            Ok(1)
        }
        // A shared type: array, map, text, XML fragment, hook and text, subdocument,
        // undefined; an XML element carries its tag name.
        7 => match c.read_u8()? {
            0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => Ok(1),
            3 => {
                c.read_string()?;
                Ok(1)
            }
            _ => Err(FrameError::Malformed),
        },
        // Any values.
        8 => {
            let count = read_count(c, 1)?;
            for _ in 0..count {
                check_any(c, 0)?;
            }
            Ok(count as u32)
        }
        // A subdocument: its guid and options.
        9 => {
            c.read_string()?;
            check_any(c, 0)?;
            Ok(1)
        }
        _ => Err(FrameError::Malformed),
    }
}

/// Checks one `Any` value nested `depth` deep.
fn check_any(c: &mut Cursor<'_>, depth: usize) -> Result<(), FrameError> {
    match c.read_u8()? {
        // Undefined, null, false, true.
        127 | 126 | 121 | 120 => {}
        // Integer.
        125 => {
            let _: i64 = c.read_var()?;
        }
        // Float32.
        124 => {
            c.read_exact(4)?;
        }
        // Float64, bigint.
        123 | 122 => {
            c.read_exact(8)?;
        }
        // String.
        119 => {
            c.read_string()?;
        }
        // Map: entries of a key and a value.
        118 => {
            if depth >= MAX_ANY_DEPTH {
                return Err(FrameError::Malformed);
            }
            for _ in 0..read_count(c, 2)? {
                c.read_string()?;
                check_any(c, depth + 1)?;
            }
        }
        // Array.
        117 => {
            if depth >= MAX_ANY_DEPTH {
                return Err(FrameError::Malformed);
            }
            for _ in 0..read_count(c, 1)? {
                check_any(c, depth + 1)?;
            }
        }
        // Buffer.
        116 => {
            c.read_buf()?;
        }
        _ => return Err(FrameError::Malformed),
    }
    Ok(())
}

/// Encodes one message as a frame.
pub fn encode(message: &Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

/// Encodes several messages as one frame.
pub fn encode_all<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Bytes {
    let mut encoder = EncoderV1::new();
    for message in messages {
        message.encode(&mut encoder);
    }
    Bytes::from(encoder.to_vec())
}

/// A sync step 1 frame carrying `state_vector`.
pub fn encode_step1(state_vector: &StateVector) -> Bytes {
    encode(&Message::Sync(SyncMessage::SyncStep1(state_vector.clone())))
}

/// A sync step 2 frame carrying `update`.
pub fn encode_step2(update: &[u8]) -> Bytes {
    encode_sync(1, update)
}

/// A sync update frame carrying `update`.
pub fn encode_update(update: &[u8]) -> Bytes {
    encode_sync(2, update)
}

fn encode_sync(kind: u8, payload: &[u8]) -> Bytes {
    let mut encoder = EncoderV1::new();
    encoder.write_var(MSG_SYNC);
    encoder.write_var(kind);
    encoder.write_buf(payload);
    Bytes::from(encoder.to_vec())
}

/// An awareness frame carrying `update`.
pub fn encode_awareness(update: &AwarenessUpdate) -> Bytes {
    encode(&Message::Awareness(update.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    fn sample_update() -> Vec<u8> {
        let doc = Doc::new();
        let notes = doc.get_or_insert_text("notes");
        notes.push(&mut doc.transact_mut(), "hello");
        let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
        update
    }

    #[test]
    fn several_messages_in_one_frame_decode_in_order() {
        let update = sample_update();
        let frame = encode_all(&[
            Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
            Message::Sync(SyncMessage::Update(update.clone())),
            Message::AwarenessQuery,
        ]);
        let messages = decode_frame(&frame).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1], Message::Sync(SyncMessage::Update(update)));
        assert_eq!(messages[2], Message::AwarenessQuery);
    }

    #[test]
    fn update_round_trips_into_a_document() {
        let frame = encode_update(&sample_update());
        let Message::Sync(SyncMessage::Update(payload)) = &decode_frame(&frame).unwrap()[0] else {
            panic!("expected an update");
        };
        let doc = Doc::new();
        let notes = doc.get_or_insert_text("notes");
        doc.transact_mut().apply_update(decode_update(payload).unwrap()).unwrap();
        assert_eq!(notes.get_string(&doc.transact()), "hello");
    }

    #[test]
    fn an_edit_re_encodes_into_its_own_bytes() {
        // `decode_update` decodes an update a second time only when yrs re-encodes it into
        // other bytes; the edits of a yrs client (an insertion after another, a
        // deletion) re-encode into exactly their own.
        let doc = Doc::with_client_id(7);
        let notes = doc.get_or_insert_text("notes");
        let mut edits = Vec::new();
        for (i, edit) in ["hello", " world", "!"].iter().enumerate() {
            let before = doc.transact().state_vector();
            let mut txn = doc.transact_mut();
            let end = notes.len(&txn);
            notes.insert(&mut txn, end, edit);
            if i == 2 {
                notes.remove_range(&mut txn, 0, 1);
            }
            drop(txn);
            edits.push(doc.transact().encode_diff_v1(&before));
        }
        for edit in edits {
            assert_eq!(decode_update(&edit).unwrap().encode_v1(), edit);
        }
    }

    /// The updates two yrs clients send while typing into one text (each transaction's
    /// update, as `observe_update_v1` hands it to a provider): insertions at the end, at the
    /// start and in the middle, multi-byte characters, deletions of their own text and of
    /// the other's, and a deletion with an insertion.
    fn keystrokes() -> Vec<Vec<u8>> {
        // Positions in UTF-16 code units, as a browser's.
        let doc = |client: u64| {
            let mut options = yrs::Options::with_client_id(yrs::block::ClientID::new(client));
            options.offset_kind = yrs::OffsetKind::Utf16;
            Doc::with_options(options)
        };
        let (a, b) = (doc(7), doc(0x1F_FFFF_FFFF_FFFF));
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for doc in [&a, &b] {
            let sent = sent.clone();
            doc.observe_update_v1("sent", move |txn: &yrs::TransactionMut, e: &yrs::UpdateEvent| {
                // What a client sends: its own transactions, not the updates it received.
                if txn.origin().is_none() {
                    sent.lock().unwrap().push(e.update.clone())
                }
            })
            .unwrap();
        }
        let (ta, tb) = (a.get_or_insert_text("notes"), b.get_or_insert_text("notes"));
        let sync = |from: &Doc, to: &Doc| {
            let update = from.transact().encode_diff_v1(&to.transact().state_vector());
            to.transact_mut_with("sync").apply_update(Update::decode_v1(&update).unwrap()).unwrap();
        };
        ta.push(&mut a.transact_mut(), "Die Patientin");
        for c in [" k", "a", "m", " ", "é", "🙂", "\n"] {
            ta.push(&mut a.transact_mut(), c);
        }
        sync(&a, &b);
        tb.insert(&mut b.transact_mut(), 0, "»");
        tb.insert(&mut b.transact_mut(), 5, "x");
        tb.insert(&mut b.transact_mut(), 6, "日本");
        tb.remove_range(&mut b.transact_mut(), 1, 2);
        sync(&b, &a);
        ta.remove_range(&mut a.transact_mut(), 0, 3);
        {
            let mut txn = a.transact_mut();
            ta.remove_range(&mut txn, 2, 1);
            ta.insert(&mut txn, 2, "Ü");
        }
        let len = ta.len(&a.transact());
        ta.insert(&mut a.transact_mut(), len, "!");
        let sent = sent.lock().unwrap().clone();
        sent
    }

    /// Decodes `update` and, where it is said to re-encode as it is, checks that it does (the
    /// claim holds for yrs as it is). Returns whether it was said to.
    fn holds_the_claim(update: &[u8]) -> bool {
        decode_update(update).unwrap();
        let as_is = re_encodes_as_is(update);
        if as_is {
            assert_eq!(Update::decode_v1(update).unwrap().encode_v1(), update);
        }
        as_is
    }

    #[test]
    fn keystrokes_are_known_to_re_encode_as_they_are() {
        let keystrokes = keystrokes();
        let mut as_is = 0;
        for update in &keystrokes {
            as_is += usize::from(holds_the_claim(update));
        }
        // Every keystroke is spared the second encoding but two: the very first insertion (no
        // origin: it names its parent), and the deletion of both members' text (a delete set
        // of two clients).
        let others: Vec<_> = keystrokes.iter().filter(|u| !re_encodes_as_is(u)).collect();
        assert_eq!(as_is, keystrokes.len() - 2, "{} of {}: {:?}", as_is, keystrokes.len(), others);
        assert!(!re_encodes_as_is(&keystrokes[0]));
        assert_eq!(others[1][..2], [0, 2], "no blocks, two clients' deletions");
        // The empty update, too.
        assert!(re_encodes_as_is(&[0, 0]));
    }

    #[test]
    fn other_shapes_are_left_to_the_round_trip() {
        let ks = keystrokes();
        let typed = ks.iter().find(|u| u[0] == 1 && re_encodes_as_is(u)).unwrap().clone();
        // A number in a longer form than yrs writes (one section counted as 0x81 0x00).
        let mut longer = vec![0x81, 0x00];
        longer.extend_from_slice(&typed[1..]);
        assert!(decode_update(&longer).is_ok());
        assert!(!re_encodes_as_is(&longer));
        // Something after the delete set.
        let mut trailing = typed.clone();
        trailing.push(0);
        assert!(!re_encodes_as_is(&trailing));
        // A parent-sub flag that an item with an origin cannot carry (yrs drops it).
        let mut flagged = typed.clone();
        let info = flagged.iter().position(|&b| matches!(b, 0x84 | 0x44 | 0xC4)).unwrap();
        flagged[info] |= 0b0010_0000;
        assert!(!re_encodes_as_is(&flagged));
        // Two clients' sections, and a whole document (its first item names its parent).
        let doc = Doc::new();
        doc.get_or_insert_text("notes").push(&mut doc.transact_mut(), "x");
        assert!(!re_encodes_as_is(&doc.transact().encode_state_as_update_v1(&StateVector::default())));
    }

    /// The same keystrokes as Yjs writes them (13.6 and 14.0 write the same bytes here): the
    /// updates of a browser running y-websocket or any stock Yjs provider.
    #[test]
    fn keystrokes_of_yjs_are_known_to_re_encode_as_they_are() {
        let yjs = [
            "010107000401056e6f7465730d4469652050617469656e74696e00",
            "0101070d84070c02206b00",
            "0101070f84070e016100",
            "0101071084070f016d00",
            "01010711840710012000",
            "0101071284071102c3a900",
            "0101071384071204f09f998200",
            "01010715840714010a00",
            "0101ffffffffffffff0f0044070002c2bb00",
            "0101ffffffffffffff0f01c407030704017800",
            "0101ffffffffffffff0f02c4ffffffffffffff0f01070406e697a5e69cac00",
            "000107010002",
            "0002ffffffffffffff0f01000107010202",
            "01010716c4ffffffffffffff0f03070402c39c01ffffffffffffff0f010301",
            "01010717840715012100",
        ];
        let bytes = |hex: &str| -> Vec<u8> {
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
        };
        let as_is: Vec<bool> = yjs.iter().map(|hex| holds_the_claim(&bytes(hex))).collect();
        // All but the first insertion and the deletion of both members' text.
        let others: Vec<usize> = (0..yjs.len()).filter(|&i| !as_is[i]).collect();
        assert_eq!(others, [0, 12]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 4096, ..Default::default() })]

        /// Whatever the bytes, an update that passes the checks, decodes, and is said to
        /// re-encode as it is, does.
        #[test]
        fn an_update_said_to_re_encode_as_is_does(
            pick in 0usize..64,
            edits in proptest::collection::vec((0usize..64, 0u8..=255, 0u8..4), 1..4),
        ) {
            let ks = keystrokes();
            let mut bytes = ks[pick % ks.len()].clone();
            for (at, byte, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if at < bytes.len() => { bytes.remove(at); }
                    _ => bytes.insert(at, byte & 0x7F),
                }
            }
            if check_update(&bytes).is_ok() && re_encodes_as_is(&bytes) {
                if let Ok(update) = Update::decode_v1(&bytes) {
                    proptest::prop_assert_eq!(update.encode_v1(), bytes);
                }
            }
        }
    }

    #[test]
    fn truncated_frame_is_refused() {
        let frame = encode_update(&sample_update());
        for cut in 1..frame.len() {
            let result = decode_frame(&frame[..cut]);
            assert!(matches!(result, Err(FrameError::Truncated | FrameError::Malformed)), "cut at {cut}: {result:?}");
        }
    }

    #[test]
    fn unknown_message_type_is_refused() {
        assert_eq!(decode_frame(&[7, 0]), Err(FrameError::UnknownType(7)));
        assert_eq!(decode_frame(&[0x80, 0x01]), Err(FrameError::UnknownType(128)));
    }

    #[test]
    fn garbage_update_payload_is_refused() {
        let frame = encode_update(&[0xff, 0xff, 0xff, 0x01, 0x02]);
        assert!(decode_frame(&frame).is_err());
    }

    #[test]
    fn empty_frame_is_refused() {
        assert_eq!(decode_frame(&[]), Err(FrameError::Empty));
    }
}

//! The sealed frames of a sealed room, and the associated data its entries are sealed with.
//!
//! In a sealed room the board travels as opaque entries: sealed by the clients under a key the
//! server never sees, forwarded and logged by the server, which reads only their headers (who
//! sent them, their sequence number, their kind and their size). `docs/PROTOCOL.md` §13 is the
//! specification; this module is its codec. Like [`crate::sync`], it runs on untrusted input:
//! every length is checked against the bytes that are left before anything is allocated, a
//! frame must end exactly where its last field ends, and nothing malformed panics.
//!
//! The first byte of a sealed frame is its type, chosen outside y-sync's message types (a
//! varint `0` to `3`), so that one kind of frame is never read as the other.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame type of an entry from a client: `seq`, `kind`, `nonce`, ciphertext.
pub const TYPE_CLIENT_ENTRY: u8 = 0x40;
/// Frame type of an entry from the server: the sender, then as a client entry.
pub const TYPE_ENTRY: u8 = 0x41;
/// Frame type of the log for a newcomer: a count, then entries without their type byte.
pub const TYPE_LOG: u8 = 0x42;
/// Frame type of a snapshot upload: the covered ids, then `seq`, `nonce`, ciphertext.
pub const TYPE_SNAPSHOT: u8 = 0x43;

/// The version tag at the head of the associated data.
pub const AAD_VERSION: &[u8] = b"balint-sealed/1";
/// Length of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag: the shortest ciphertext (of an empty plaintext).
pub const TAG_LEN: usize = 16;
/// The longest sender (member id) accepted, in bytes.
pub const MAX_SENDER_LEN: usize = 64;
/// The longest ciphertext the decoder accepts. The server's frame limit is far lower; this
/// bounds what a client accepts from the server.
pub const MAX_CIPHERTEXT_LEN: usize = 64 << 20;
/// The longest sealed value (a sealed display name or title) accepted, in characters of its
/// base64url text: room for a title of 200 four-byte characters.
pub const MAX_VALUE_CHARS: usize = 1200;
/// The shortest sealed value, in bytes: a sequence number, a nonce and a tag.
pub const MIN_VALUE_LEN: usize = 8 + NONCE_LEN + TAG_LEN;

/// What a sealed value is. Its byte is part of the frame and of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Yjs v1 update of the board.
    Update,
    /// A y-protocols awareness update.
    Awareness,
    /// A Yjs v1 update holding the whole board.
    Snapshot,
    /// A display name, UTF-8.
    Name,
    /// The room's title, UTF-8.
    Title,
}

impl Kind {
    /// The kind's byte.
    pub fn byte(self) -> u8 {
        match self {
            Kind::Update => 1,
            Kind::Awareness => 2,
            Kind::Snapshot => 3,
            Kind::Name => 4,
            Kind::Title => 5,
        }
    }

    /// The kind of a byte, if it names one.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Update,
            2 => Kind::Awareness,
            3 => Kind::Snapshot,
            4 => Kind::Name,
            5 => Kind::Title,
            _ => return None,
        })
    }
}

/// Why a sealed frame was refused. The text never quotes the frame's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame carried no bytes at all.
    #[error("empty sealed frame")]
    Empty,
    /// The frame ended inside a field.
    #[error("truncated sealed frame")]
    Truncated,
    /// Bytes were left after the frame's last field.
    #[error("trailing bytes after a sealed frame")]
    Trailing,
    /// The first byte names no sealed frame type (or one that does not travel this way).
    #[error("unknown sealed frame type {0}")]
    UnknownType(u8),
    /// The kind byte names no kind.
    #[error("unknown sealed kind {0}")]
    UnknownKind(u8),
    /// A sender that is empty, too long, or not `[A-Za-z0-9]`.
    #[error("bad sender in a sealed frame")]
    BadSender,
    /// A ciphertext shorter than its tag, or longer than [`MAX_CIPHERTEXT_LEN`].
    #[error("bad ciphertext length in a sealed frame")]
    BadLength,
    /// A sealed value (name or title) that is not base64url of a sequence number, a nonce and
    /// a ciphertext, or is longer than [`MAX_VALUE_CHARS`].
    #[error("not a sealed value")]
    BadValue,
}

/// The sealed part of an entry: what only the key holders can read, and its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The author's sequence number.
    pub seq: u64,
    /// What the plaintext is.
    pub kind: Kind,
    /// The random nonce it was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext, tag included.
    pub ciphertext: Bytes,
}

/// An entry as the server forwards and logs it: the sealed part and its sender, stamped by the
/// server from the connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The author's member id.
    pub sender: String,
    /// The sealed part.
    pub sealed: Sealed,
}

/// A snapshot upload: the entries it covers, by `(sender, seq)`, and the sealed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUpload {
    /// The entries the snapshot replaces.
    pub covers: Vec<(String, u64)>,
    /// The sealed snapshot (kind [`Kind::Snapshot`]).
    pub sealed: Sealed,
}

/// A sealed frame, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An entry from a client (`0x40`): no sender, the server stamps it.
    ClientEntry(Sealed),
    /// An entry from the server (`0x41`).
    Entry(Entry),
    /// The log for a newcomer (`0x42`).
    Log(Vec<Entry>),
    /// A snapshot upload (`0x43`).
    Snapshot(SnapshotUpload),
}

/// The associated data a value is sealed with: the version tag, the room, the sender, the
/// sequence number and the kind (`docs/PROTOCOL.md` §13):
/// `lp(version) || lp(room) || lp(sender) || u64(seq) || u8(kind)`, where `lp(x)` is `x`'s
/// length as a big-endian `u16`, then `x`.
pub fn associated_data(room: &str, sender: &str, seq: u64, kind: Kind) -> Vec<u8> {
    let mut aad = Vec::with_capacity(2 + AAD_VERSION.len() + 2 + room.len() + 2 + sender.len() + 9);
    for field in [AAD_VERSION, room.as_bytes(), sender.as_bytes()] {
        // Room ids and member ids are short; a longer field is cut at the length it can name,
        // which only makes the value fail to open.
        let field = &field[..field.len().min(u16::MAX as usize)];
        aad.extend_from_slice(&(field.len() as u16).to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.push(kind.byte());
    aad
}

/// Whether `sender` is a sender the frames can carry: 1 to 64 bytes of `[A-Za-z0-9]`.
pub fn valid_sender(sender: &str) -> bool {
    (1..=MAX_SENDER_LEN).contains(&sender.len()) && sender.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Encodes a client's entry (`0x40`).
pub fn encode_client_entry(sealed: &Sealed) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + sealed_len(sealed));
    out.put_u8(TYPE_CLIENT_ENTRY);
    put_sealed(&mut out, sealed);
    out.freeze()
}

/// Encodes an entry from the server (`0x41`). The sender must be valid ([`valid_sender`]); the
/// server's member ids are.
pub fn encode_entry(entry: &Entry) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + entry_len(entry));
    out.put_u8(TYPE_ENTRY);
    put_entry(&mut out, entry);
    out.freeze()
}

/// Encodes the log for a newcomer (`0x42`).
pub fn encode_log<'a>(entries: impl IntoIterator<Item = &'a Entry> + Clone) -> Bytes {
    let (count, len) = entries.clone().into_iter().fold((0u32, 0), |(n, len), e| (n + 1, len + entry_len(e)));
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(TYPE_LOG);
    out.put_u32(count);
    for entry in entries {
        put_entry(&mut out, entry);
    }
    out.freeze()
}

/// Encodes a snapshot upload (`0x43`). The kind of `upload.sealed` is not written: it is
/// [`Kind::Snapshot`].
pub fn encode_snapshot(upload: &SnapshotUpload) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(TYPE_SNAPSHOT);
    out.put_u32(upload.covers.len() as u32);
    for (sender, seq) in &upload.covers {
        put_sender(&mut out, sender);
        out.put_u64(*seq);
    }
    out.put_u64(upload.sealed.seq);
    out.put_slice(&upload.sealed.nonce);
    out.put_u32(upload.sealed.ciphertext.len() as u32);
    out.put_slice(&upload.sealed.ciphertext);
    out.freeze()
}

/// Decodes a sealed frame of any type. The caller decides which types may travel its way.
pub fn decode(frame: &[u8]) -> Result<Frame, FrameError> {
    let (&kind, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    let mut reader = Reader { rest };
    let decoded = match kind {
        TYPE_CLIENT_ENTRY => Frame::ClientEntry(reader.sealed()?),
        TYPE_ENTRY => Frame::Entry(reader.entry()?),
        TYPE_LOG => {
            let count = reader.u32()? as usize;
            // Each entry takes at least this many bytes: a count cannot reserve more than the
            // frame could hold.
            const MIN_ENTRY: usize = 1 + 1 + 8 + 1 + NONCE_LEN + 4 + TAG_LEN;
            if count > reader.rest.len() / MIN_ENTRY {
                return Err(FrameError::Truncated);
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(reader.entry()?);
            }
            Frame::Log(entries)
        }
        TYPE_SNAPSHOT => {
            let count = reader.u32()? as usize;
            const MIN_ID: usize = 1 + 1 + 8;
            if count > reader.rest.len() / MIN_ID {
                return Err(FrameError::Truncated);
            }
            let mut covers = Vec::with_capacity(count);
            for _ in 0..count {
                let sender = reader.sender()?;
                covers.push((sender, reader.u64()?));
            }
            let seq = reader.u64()?;
            let nonce = reader.nonce()?;
            let ciphertext = reader.ciphertext()?;
            Frame::Snapshot(SnapshotUpload { covers, sealed: Sealed { seq, kind: Kind::Snapshot, nonce, ciphertext } })
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    if reader.rest.is_empty() {
        Ok(decoded)
    } else {
        Err(FrameError::Trailing)
    }
}

/// Whether a binary frame is a sealed frame by its first byte (as opposed to y-sync).
pub fn is_sealed_frame(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(TYPE_CLIENT_ENTRY..=TYPE_SNAPSHOT))
}

fn sealed_len(sealed: &Sealed) -> usize {
    8 + 1 + NONCE_LEN + 4 + sealed.ciphertext.len()
}

fn entry_len(entry: &Entry) -> usize {
    1 + entry.sender.len() + sealed_len(&entry.sealed)
}

fn put_sender(out: &mut BytesMut, sender: &str) {
    let sender = &sender.as_bytes()[..sender.len().min(MAX_SENDER_LEN)];
    out.put_u8(sender.len() as u8);
    out.put_slice(sender);
}

fn put_sealed(out: &mut BytesMut, sealed: &Sealed) {
    out.put_u64(sealed.seq);
    out.put_u8(sealed.kind.byte());
    out.put_slice(&sealed.nonce);
    out.put_u32(sealed.ciphertext.len() as u32);
    out.put_slice(&sealed.ciphertext);
}

fn put_entry(out: &mut BytesMut, entry: &Entry) {
    put_sender(out, &entry.sender);
    put_sealed(out, &entry.sealed);
}

/// Encodes a sealed display name or title as the room protocol carries it: its sequence number
/// (`u64`, big-endian), its nonce and its ciphertext, in base64url without padding
/// (`docs/PROTOCOL.md` §13). The kind is not written: the field says it.
pub fn encode_value(sealed: &Sealed) -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(8 + NONCE_LEN + sealed.ciphertext.len());
    bytes.extend_from_slice(&sealed.seq.to_be_bytes());
    bytes.extend_from_slice(&sealed.nonce);
    bytes.extend_from_slice(&sealed.ciphertext);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a sealed value of `kind` ([`Kind::Name`] or [`Kind::Title`]). The server calls it
/// to refuse what is not a sealed value, without being able to open it.
pub fn decode_value(text: &str, kind: Kind) -> Result<Sealed, FrameError> {
    use base64::Engine;
    if text.len() > MAX_VALUE_CHARS {
        return Err(FrameError::BadValue);
    }
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.as_bytes()).map_err(|_| FrameError::BadValue)?;
    if bytes.len() < MIN_VALUE_LEN {
        return Err(FrameError::BadValue);
    }
    let (seq, rest) = bytes.split_at(8);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    Ok(Sealed {
        seq: u64::from_be_bytes(seq.try_into().expect("eight bytes")),
        kind,
        nonce: nonce.try_into().expect("a nonce's length"),
        ciphertext: Bytes::copy_from_slice(ciphertext),
    })
}

/// Reads fields off the front of a frame.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    fn nonce(&mut self) -> Result<[u8; NONCE_LEN], FrameError> {
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(self.take(NONCE_LEN)?);
        Ok(nonce)
    }

    fn sender(&mut self) -> Result<String, FrameError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        let sender = std::str::from_utf8(bytes).map_err(|_| FrameError::BadSender)?;
        if valid_sender(sender) {
            Ok(sender.to_owned())
        } else {
            Err(FrameError::BadSender)
        }
    }

    fn ciphertext(&mut self) -> Result<Bytes, FrameError> {
        let len = self.u32()? as usize;
        if !(TAG_LEN..=MAX_CIPHERTEXT_LEN).contains(&len) {
            return Err(FrameError::BadLength);
        }
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn sealed(&mut self) -> Result<Sealed, FrameError> {
        let seq = self.u64()?;
        let byte = self.u8()?;
        let kind = Kind::from_byte(byte).ok_or(FrameError::UnknownKind(byte))?;
        let nonce = self.nonce()?;
        let ciphertext = self.ciphertext()?;
        Ok(Sealed { seq, kind, nonce, ciphertext })
    }

    fn entry(&mut self) -> Result<Entry, FrameError> {
        let sender = self.sender()?;
        Ok(Entry { sender, sealed: self.sealed()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(seq: u64, kind: Kind, len: usize) -> Sealed {
        Sealed { seq, kind, nonce: [7; NONCE_LEN], ciphertext: Bytes::from(vec![0xAB; len]) }
    }

    fn entry(sender: &str, seq: u64) -> Entry {
        Entry { sender: sender.to_owned(), sealed: sealed(seq, Kind::Update, TAG_LEN + 3) }
    }

    fn every_frame() -> Vec<(Frame, Bytes)> {
        let client = sealed(u64::MAX - 1, Kind::Awareness, TAG_LEN);
        let one = entry("AbC123", 1 << 32 | 1);
        let log = vec![entry("a", 1), entry("Zz9", 2), entry(&"x".repeat(MAX_SENDER_LEN), 3)];
        let snapshot =
            SnapshotUpload { covers: vec![("a".into(), 1), ("Zz9".into(), 2)], sealed: sealed(9, Kind::Snapshot, 40) };
        vec![
            (Frame::ClientEntry(client.clone()), encode_client_entry(&client)),
            (Frame::Entry(one.clone()), encode_entry(&one)),
            (Frame::Log(log.clone()), encode_log(&log)),
            (Frame::Log(vec![]), encode_log(&[])),
            (Frame::Snapshot(snapshot.clone()), encode_snapshot(&snapshot)),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for (frame, bytes) in every_frame() {
            assert_eq!(decode(&bytes), Ok(frame));
            assert!(is_sealed_frame(&bytes));
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let bytes = encode_entry(&Entry { sender: "ab".into(), sealed: sealed(0x0102, Kind::Update, TAG_LEN) });
        let mut expected = vec![0x41, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 1, 2, 1];
        expected.extend([7; NONCE_LEN]);
        expected.extend([0, 0, 0, TAG_LEN as u8]);
        expected.extend([0xAB; TAG_LEN]);
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn every_truncation_is_refused() {
        for (_, bytes) in every_frame() {
            for cut in 0..bytes.len() {
                let result = decode(&bytes[..cut]);
                assert!(
                    matches!(result, Err(FrameError::Truncated | FrameError::Empty)),
                    "{cut} of {}: {result:?}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for (_, bytes) in every_frame() {
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(decode(&longer), Err(FrameError::Trailing));
        }
    }

    #[test]
    fn oversized_and_undersized_lengths_are_refused() {
        let bytes = encode_client_entry(&sealed(1, Kind::Update, TAG_LEN));
        let len_at = 1 + 8 + 1 + NONCE_LEN;
        let mut huge = bytes.to_vec();
        huge[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge), Err(FrameError::BadLength));
        let mut short = bytes.to_vec();
        short[len_at..len_at + 4].copy_from_slice(&(TAG_LEN as u32 - 1).to_be_bytes());
        assert_eq!(decode(&short), Err(FrameError::BadLength));
        // A length within bounds but past the frame's end.
        let mut past = bytes.to_vec();
        past[len_at..len_at + 4].copy_from_slice(&(TAG_LEN as u32 + 1).to_be_bytes());
        assert_eq!(decode(&past), Err(FrameError::Truncated));
        // A log that claims more entries than its bytes could hold allocates nothing.
        let mut log = vec![TYPE_LOG];
        log.extend(u32::MAX.to_be_bytes());
        assert_eq!(decode(&log), Err(FrameError::Truncated));
        let mut covers = vec![TYPE_SNAPSHOT];
        covers.extend(u32::MAX.to_be_bytes());
        assert_eq!(decode(&covers), Err(FrameError::Truncated));
    }

    #[test]
    fn unknown_types_kinds_and_bad_senders_are_refused() {
        for first in [0u8, 1, 2, 3, 0x3F, 0x44, 0xFF] {
            assert_eq!(decode(&[first, 0, 0]), Err(FrameError::UnknownType(first)));
            assert!(!is_sealed_frame(&[first]));
        }
        assert_eq!(decode(&[]), Err(FrameError::Empty));
        let mut bytes = encode_client_entry(&sealed(1, Kind::Update, TAG_LEN)).to_vec();
        for kind in [0u8, 6, 0xFF] {
            bytes[9] = kind;
            assert_eq!(decode(&bytes), Err(FrameError::UnknownKind(kind)));
        }
        let mut bytes = encode_entry(&entry("ab", 1)).to_vec();
        bytes[2] = b'-';
        assert_eq!(decode(&bytes), Err(FrameError::BadSender));
        bytes[1] = 0;
        assert_eq!(decode(&bytes), Err(FrameError::BadSender));
        let mut too_long = vec![TYPE_ENTRY, MAX_SENDER_LEN as u8 + 1];
        too_long.extend(vec![b'a'; MAX_SENDER_LEN + 1]);
        too_long.extend(&encode_client_entry(&sealed(1, Kind::Update, TAG_LEN))[1..]);
        assert_eq!(decode(&too_long), Err(FrameError::BadSender));
    }

    #[test]
    fn y_sync_frames_are_not_sealed_frames_and_the_other_way_round() {
        // A y-sync decoder reads a sealed frame's first byte as an unknown message type.
        let bytes = encode_client_entry(&sealed(1, Kind::Update, TAG_LEN));
        assert_eq!(
            crate::sync::decode_frame(&bytes),
            Err(crate::sync::FrameError::UnknownType(TYPE_CLIENT_ENTRY as u32))
        );
        let update = crate::sync::encode_update(&[0, 0]);
        assert!(!is_sealed_frame(&update));
    }

    #[test]
    fn the_associated_data_binds_every_field() {
        let aad = associated_data("room1", "ab", 0x0102, Kind::Title);
        let mut expected = vec![0, 15];
        expected.extend(b"balint-sealed/1");
        expected.extend([0, 5]);
        expected.extend(b"room1");
        expected.extend([0, 2]);
        expected.extend(b"ab");
        expected.extend([0, 0, 0, 0, 0, 0, 1, 2, 5]);
        assert_eq!(aad, expected);
        // Moving a byte from one field to the next changes the data.
        assert_ne!(associated_data("ab", "c", 1, Kind::Update), associated_data("a", "bc", 1, Kind::Update));
        assert_ne!(associated_data("a", "b", 1, Kind::Update), associated_data("a", "b", 2, Kind::Update));
        assert_ne!(associated_data("a", "b", 1, Kind::Update), associated_data("a", "b", 1, Kind::Awareness));
        assert_eq!(associated_data("r", "", 0, Kind::Title).len(), 2 + 15 + 2 + 1 + 2 + 9);
    }

    #[test]
    fn sealed_values_round_trip_and_anything_else_is_refused() {
        let value = sealed(0x0102_0304_0506_0708, Kind::Name, TAG_LEN + 5);
        let text = encode_value(&value);
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{text}");
        assert_eq!(decode_value(&text, Kind::Name), Ok(value.clone()));
        // The field names the kind; the text does not.
        assert_eq!(decode_value(&text, Kind::Title).map(|v| v.kind), Ok(Kind::Title));
        // Too short to hold a sequence number, a nonce and a tag.
        let short = encode_value(&Sealed { ciphertext: Bytes::from_static(&[0; TAG_LEN - 1]), ..value.clone() });
        assert_eq!(decode_value(&short, Kind::Name), Err(FrameError::BadValue));
        // Not base64url, padded, or too long.
        for bad in ["a name in clear", "AAAA+/==", &format!("{text}=")] {
            assert_eq!(decode_value(bad, Kind::Name), Err(FrameError::BadValue), "{bad}");
        }
        let long = encode_value(&Sealed { ciphertext: vec![7; MAX_VALUE_CHARS].into(), ..value });
        assert!(long.len() > MAX_VALUE_CHARS);
        assert_eq!(decode_value(&long, Kind::Title), Err(FrameError::BadValue));
        // Every value a title of 200 four-byte characters seals to is accepted.
        let longest = sealed(1, Kind::Title, 200 * 4 + TAG_LEN);
        assert!(decode_value(&encode_value(&longest), Kind::Title).is_ok());
    }
}

//! Sealing for sealed rooms: the room key, and XChaCha20-Poly1305 over the values the server
//! must not read (`docs/PROTOCOL.md` §13).
//!
//! The key travels only in the link's URL fragment (`#t=TOKEN&k=KEY`). Every value is sealed
//! with a fresh random 192-bit nonce and associated data that binds the room, the sender, the
//! sender's sequence number and the kind of value ([`balint_proto::sealed::associated_data`]),
//! so that neither the server nor another member can move an entry to another room or author,
//! or replay it as something else. What opens is still distrusted: an update is checked by
//! proto's bounded walk before yrs sees it ([`open_update`]).

use balint_proto::sealed::{associated_data, Entry, Kind, Sealed, NONCE_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Length of a room key, in bytes.
pub const KEY_LEN: usize = 32;

/// Why a value could not be sealed or opened. Never quotes a key or a plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key in the link is not 32 bytes of unpadded base64url.
    #[error("the room key in the link is malformed")]
    BadKey,
    /// The platform gave no random bytes.
    #[error("no random numbers available")]
    NoRandom,
    /// The value failed to authenticate: another key, room, sender, sequence number or kind,
    /// or a changed byte.
    #[error("a sealed value failed to authenticate")]
    Forged,
    /// The value opened, but is not the kind of value it was opened as.
    #[error("a sealed value is of the wrong kind")]
    WrongKind,
    /// The value opened, but is not a well-formed Yjs update.
    #[error("a sealed update is malformed")]
    NotAnUpdate,
    /// The value opened, but is not a valid name or title (not UTF-8, too long, control
    /// characters).
    #[error("a sealed name or title breaks the rules")]
    NotText,
}

/// A room's 256-bit key. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomKey([u8; KEY_LEN]);

impl std::fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomKey(..)")
    }
}

impl RoomKey {
    /// A fresh random key, for a room being created.
    pub fn generate() -> Result<Self, SealError> {
        let mut key = [0; KEY_LEN];
        getrandom::fill(&mut key).map_err(|_| SealError::NoRandom)?;
        Ok(RoomKey(key))
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        RoomKey(bytes)
    }

    /// The key from a link's `k=`: 32 bytes in base64url without padding (43 characters).
    pub fn from_base64url(text: &str) -> Result<Self, SealError> {
        let bytes = URL_SAFE_NO_PAD.decode(text.as_bytes()).map_err(|_| SealError::BadKey)?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(RoomKey(bytes))
    }

    /// The key as a link carries it: base64url without padding.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

/// A client session's sequence numbers: a random 32-bit epoch, drawn once per session, in the
/// high half, and a counter from 1 in the low half. A reloaded page draws a new epoch, so it
/// never reuses a number.
#[derive(Debug, Clone)]
pub struct Sequence {
    epoch: u32,
    counter: u32,
}

impl Sequence {
    /// A new session's numbers, with a random epoch.
    pub fn new() -> Result<Self, SealError> {
        let mut epoch = [0; 4];
        getrandom::fill(&mut epoch).map_err(|_| SealError::NoRandom)?;
        Ok(Sequence::with_epoch(u32::from_be_bytes(epoch)))
    }

    /// Numbers of the epoch given (tests).
    pub fn with_epoch(epoch: u32) -> Self {
        Sequence { epoch, counter: 0 }
    }

    /// The next number. When the counter runs out (four billion values in one session), a
    /// new epoch is drawn.
    pub fn next_seq(&mut self) -> Result<u64, SealError> {
        if self.counter == u32::MAX {
            *self = Sequence::new()?;
        }
        self.counter += 1;
        Ok((u64::from(self.epoch) << 32) | u64::from(self.counter))
    }
}

/// Seals `plaintext` as the value `(room, sender, seq, kind)`, under a fresh random nonce.
pub fn seal(
    key: &RoomKey,
    room: &str,
    sender: &str,
    seq: u64,
    kind: Kind,
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    let mut nonce = [0; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| SealError::NoRandom)?;
    let aad = associated_data(room, sender, seq, kind);
    let ciphertext = key
        .cipher()
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        // Only a plaintext beyond what the cipher can count (256 GiB) fails.
        .map_err(|_| SealError::Forged)?;
    Ok(Sealed { seq, kind, nonce, ciphertext: ciphertext.into() })
}

/// Opens `sealed`, written by `sender` in `room`; fails unless every byte and every bound field
/// is as it was sealed.
pub fn open(key: &RoomKey, room: &str, sender: &str, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
    let aad = associated_data(room, sender, sealed.seq, sealed.kind);
    key.cipher()
        .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
        .map_err(|_| SealError::Forged)
}

/// Opens a board update or snapshot the server forwarded, and checks it with the same bounded
/// walk the server runs on plain rooms' updates, so that yrs only ever sees a well-formed update.
pub fn open_update(key: &RoomKey, room: &str, entry: &Entry) -> Result<Vec<u8>, SealError> {
    if !matches!(entry.sealed.kind, Kind::Update | Kind::Snapshot) {
        return Err(SealError::WrongKind);
    }
    let plaintext = open(key, room, &entry.sender, &entry.sealed)?;
    balint_proto::sync::decode_update(&plaintext).map_err(|_| SealError::NotAnUpdate)?;
    Ok(plaintext)
}

/// Seals a display name (sealed with our member id and a fresh `seq`) or a title (sender `""`,
/// `seq` 0) as the room protocol carries it: a base64url string (`docs/PROTOCOL.md` §13).
pub fn seal_text(
    key: &RoomKey,
    room: &str,
    sender: &str,
    seq: u64,
    kind: Kind,
    text: &str,
) -> Result<String, SealError> {
    Ok(balint_proto::sealed::encode_value(&seal(key, room, sender, seq, kind, text.as_bytes())?))
}

/// Opens a sealed display name of `sender`, and checks it against the name rules: a value that
/// does not open, or opens to something that is no valid name, is an error (shown as a
/// placeholder, never as text).
pub fn open_name(key: &RoomKey, room: &str, sender: &str, value: &str) -> Result<String, SealError> {
    let text = open_text(key, room, sender, value, Kind::Name)?;
    balint_proto::room::check_name(&text).map(str::to_owned).map_err(|_| SealError::NotText)
}

/// Opens a sealed title (sender `""`), and checks it against the title rules.
pub fn open_title(key: &RoomKey, room: &str, value: &str) -> Result<Option<String>, SealError> {
    let text = open_text(key, room, "", value, Kind::Title)?;
    balint_proto::room::check_title(&text).map(|t| t.map(str::to_owned)).map_err(|_| SealError::NotText)
}

fn open_text(key: &RoomKey, room: &str, sender: &str, value: &str, kind: Kind) -> Result<String, SealError> {
    let sealed = balint_proto::sealed::decode_value(value, kind).map_err(|_| SealError::Forged)?;
    String::from_utf8(open(key, room, sender, &sealed)?).map_err(|_| SealError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    fn update(text: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let notes = doc.get_or_insert_text("notes");
        notes.insert(&mut doc.transact_mut(), 0, text);
        let txn = doc.transact();
        txn.encode_state_as_update_v1(&StateVector::default())
    }

    fn entry(sender: &str, sealed: Sealed) -> Entry {
        Entry { sender: sender.to_owned(), sealed }
    }

    #[test]
    fn the_key_round_trips_through_base64url() {
        let key = RoomKey::generate().unwrap();
        let text = key.to_base64url();
        assert_eq!(text.len(), 43);
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(RoomKey::from_base64url(&text), Ok(key.clone()));
        assert_ne!(RoomKey::generate().unwrap(), key);
        assert!(!format!("{key:?}").contains(&text));
        // What `openssl rand -base64 32 | tr '+/' '-_' | tr -d '='` prints.
        let openssl = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80";
        assert!(RoomKey::from_base64url(openssl).is_ok());
        for bad in ["", "short", &format!("{text}A"), &format!("{text}="), &text.replace(|_| true, "+")] {
            assert_eq!(RoomKey::from_base64url(bad), Err(SealError::BadKey), "{bad}");
        }
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() {
        let key = RoomKey::generate().unwrap();
        let plaintext = update("Frau K. rief an");
        let sealed = seal(&key, "room1", "alice", 1 << 32 | 1, Kind::Update, &plaintext).unwrap();
        assert_eq!(open(&key, "room1", "alice", &sealed), Ok(plaintext.clone()));
        assert_eq!(open_update(&key, "room1", &entry("alice", sealed.clone())), Ok(plaintext.clone()));
        assert!(!sealed.ciphertext.windows(8).any(|w| plaintext.windows(8).any(|p| p == w)));

        let forged = Err(SealError::Forged);
        assert_eq!(open(&key, "room2", "alice", &sealed), forged, "another room");
        assert_eq!(open(&key, "room1", "bob", &sealed), forged, "another sender");
        assert_eq!(open(&key, "room1", "alice", &Sealed { seq: sealed.seq + 1, ..sealed.clone() }), forged, "seq");
        assert_eq!(open(&key, "room1", "alice", &Sealed { kind: Kind::Awareness, ..sealed.clone() }), forged, "kind");
        assert_eq!(open(&RoomKey::generate().unwrap(), "room1", "alice", &sealed), forged, "another key");
        for bit in [0, 7, sealed.ciphertext.len() * 8 - 1] {
            let mut ciphertext = sealed.ciphertext.to_vec();
            ciphertext[bit / 8] ^= 1 << (bit % 8);
            let flipped = Sealed { ciphertext: ciphertext.into(), ..sealed.clone() };
            assert_eq!(open(&key, "room1", "alice", &flipped), forged, "bit {bit}");
        }
        let mut nonce = sealed.nonce;
        nonce[23] ^= 1;
        assert_eq!(open(&key, "room1", "alice", &Sealed { nonce, ..sealed.clone() }), forged, "nonce");
    }

    #[test]
    fn every_seal_draws_a_new_nonce() {
        let key = RoomKey::generate().unwrap();
        let a = seal(&key, "r", "s", 1, Kind::Update, b"same").unwrap();
        let b = seal(&key, "r", "s", 1, Kind::Update, b"same").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn an_opened_value_that_is_no_update_never_reaches_yrs() {
        let key = RoomKey::generate().unwrap();
        // Two bytes that declare a billion structs: the bounded walk refuses them.
        for plaintext in [&b"\xff\xff\xff\xff\x03"[..], b"not an update", b""] {
            let sealed = seal(&key, "r", "s", 1, Kind::Update, plaintext).unwrap();
            assert_eq!(open_update(&key, "r", &entry("s", sealed)), Err(SealError::NotAnUpdate));
        }
        let awareness = seal(&key, "r", "s", 1, Kind::Awareness, &update("x")).unwrap();
        assert_eq!(open_update(&key, "r", &entry("s", awareness)), Err(SealError::WrongKind));
        // And one that is an update goes on to yrs and reads back.
        let sealed = seal(&key, "r", "s", 2, Kind::Snapshot, &update("Notiz")).unwrap();
        let opened = open_update(&key, "r", &entry("s", sealed)).unwrap();
        let doc = Doc::new();
        let notes = doc.get_or_insert_text("notes");
        doc.transact_mut().apply_update(yrs::Update::decode_v1(&opened).unwrap()).unwrap();
        assert_eq!(notes.get_string(&doc.transact()), "Notiz");
    }

    #[test]
    fn sequence_numbers_carry_the_epoch_and_never_repeat() {
        let mut seq = Sequence::with_epoch(0xDEAD_BEEF);
        assert_eq!(seq.next_seq(), Ok(0xDEAD_BEEF_0000_0001));
        assert_eq!(seq.next_seq(), Ok(0xDEAD_BEEF_0000_0002));
        let mut other = Sequence::new().unwrap();
        let mut again = Sequence::new().unwrap();
        assert_ne!(other.next_seq().unwrap() >> 32, again.next_seq().unwrap() >> 32, "a new session, a new epoch");
        let mut full = Sequence { epoch: 5, counter: u32::MAX };
        assert_ne!(full.next_seq().unwrap() >> 32, 5);
    }

    #[test]
    fn names_and_titles_open_only_where_they_were_sealed_and_only_when_valid() {
        let key = RoomKey::generate().unwrap();
        let name = seal_text(&key, "room1", "m1", 7, Kind::Name, "Ann Müller").unwrap();
        assert!(!name.contains("Ann"));
        assert_eq!(open_name(&key, "room1", "m1", &name).unwrap(), "Ann Müller");
        // Moved to another member, room or kind, or under another key: it does not open.
        assert_eq!(open_name(&key, "room1", "m2", &name), Err(SealError::Forged));
        assert_eq!(open_name(&key, "room2", "m1", &name), Err(SealError::Forged));
        assert_eq!(open_title(&key, "room1", &name), Err(SealError::Forged));
        assert_eq!(open_name(&RoomKey::generate().unwrap(), "room1", "m1", &name), Err(SealError::Forged));
        assert_eq!(open_name(&key, "room1", "m1", "not a sealed value"), Err(SealError::Forged));
        // A member who holds the key cannot make the others show a name that breaks the rules.
        for bad in ["", "Ann\nBen", &"x".repeat(65)] {
            let value = seal_text(&key, "room1", "m1", 8, Kind::Name, bad).unwrap();
            assert_eq!(open_name(&key, "room1", "m1", &value), Err(SealError::NotText), "{bad:?}");
        }
        let value =
            balint_proto::sealed::encode_value(&seal(&key, "room1", "m1", 9, Kind::Name, &[0xff, 0xfe]).unwrap());
        assert_eq!(open_name(&key, "room1", "m1", &value), Err(SealError::NotText));

        let title = seal_text(&key, "room1", "", 0, Kind::Title, "Case of Mrs. K").unwrap();
        assert_eq!(open_title(&key, "room1", &title).unwrap().as_deref(), Some("Case of Mrs. K"));
        let long = seal_text(&key, "room1", "", 0, Kind::Title, &"\u{1F600}".repeat(200)).unwrap();
        assert!(long.len() <= balint_proto::sealed::MAX_VALUE_CHARS, "the longest title fits");
        assert_eq!(open_title(&key, "room1", &long).unwrap().map(|t| t.chars().count()), Some(200));
    }
}

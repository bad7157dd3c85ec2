//! Room links: tokens signed with HMAC-SHA256 that name a room, a role, an expiry, the room's
//! link generation and the key that signed them.
//!
//! A token is `v2.<kid>.<payload>.<mac>`:
//! - `kid` names the signing key: the first bytes of a SHA-256 of the secret, base64url. It
//!   lets a node hold a previous secret during a rotation and pick the right one at once; it
//!   reveals nothing of the secret.
//! - `payload` is `room|role|expiry|generation` (expiry in Unix seconds), base64url.
//! - `mac` is the HMAC-SHA256 of `v2.<kid>.<payload>` (the token's text up to the last dot)
//!   under the named key, base64url.
//!
//! Tokens of the first format, `v1.<payload>.<mac>` with the payload `room|role|expiry` and
//! the MAC over the decoded payload, are still accepted: they name no key, so every key the
//! node holds is tried, and their generation is 0.
//!
//! Verification recomputes the MAC and compares it in constant time (`Mac::verify_slice`)
//! before reading the payload.

use std::path::Path;

use balint_proto::room::Role;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The format of the first links, still accepted.
const VERSION_1: &str = "v1";
/// The format issued now: it names its key and carries the link generation.
const VERSION_2: &str = "v2";
/// Bytes of the secret's SHA-256 that make a key id.
const KEY_ID_BYTES: usize = 8;
/// Shortest secret accepted from configuration.
pub const MIN_SECRET_LEN: usize = 32;
/// Name of the generated secret's file in the data directory.
const SECRET_FILE: &str = "secret";

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The room the token opens.
    pub room: String,
    /// The role it gives.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The room's link generation when the token was issued (0 for the first links). A leader
    /// who renews the links raises the room's generation, and older invite and observer links
    /// no longer let newcomers in.
    pub generation: u64,
}

/// Why a token was refused. Deliberately coarse towards clients (all are 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// The token is not of a known shape or its payload does not parse.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match, or the key it names is not held here: forged, or signed with a
    /// secret this node does not (or no longer) accept.
    #[error("bad token signature")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("expired token")]
    Expired,
    /// The token is valid but for another room.
    #[error("token for another room")]
    WrongRoom,
}

/// One signing secret and the id it is named by.
#[derive(Clone)]
struct Key {
    secret: Vec<u8>,
    id: String,
}

impl Key {
    fn new(secret: &[u8]) -> Self {
        Key { secret: secret.to_vec(), id: key_id(secret) }
    }

    fn mac(&self, signed: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(signed);
        mac
    }
}

/// The id of a secret: a short prefix of a domain-separated SHA-256, which names the key in
/// tokens without revealing it.
fn key_id(secret: &[u8]) -> String {
    let digest = Sha256::new().chain_update(b"balint-room key id\0").chain_update(secret).finalize();
    URL_SAFE_NO_PAD.encode(&digest[..KEY_ID_BYTES])
}

/// Signs tokens with the current secret and verifies them with it or with a previous one.
#[derive(Clone)]
pub struct Signer {
    current: Key,
    /// Secrets of before a rotation, still accepted, never used to sign.
    previous: Vec<Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer over `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Signer { current: Key::new(secret), previous: Vec::new() }
    }

    /// This signer, also accepting links signed with each of `previous`.
    pub fn with_previous<S: AsRef<[u8]>>(mut self, previous: &[S]) -> Self {
        for secret in previous {
            let key = Key::new(secret.as_ref());
            if key.id != self.current.id && !self.previous.iter().any(|k| k.id == key.id) {
                self.previous.push(key);
            }
        }
        self
    }

    /// The id of the key that signs new links, as it appears in them.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// The configured secret, or the one kept in `data_dir`, generated on first start, and the
    /// previous secrets still accepted during a rotation.
    pub fn from_config(secret: Option<&str>, previous: &[String], data_dir: &Path) -> anyhow::Result<Self> {
        // An empty entry (an empty variable, a trailing comma) names no secret.
        let previous: Vec<&str> = previous.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
        for old in &previous {
            anyhow::ensure!(
                old.len() >= MIN_SECRET_LEN,
                "each previous secret must be at least {MIN_SECRET_LEN} characters"
            );
        }
        Ok(Self::current_from_config(secret, data_dir)?.with_previous(&previous))
    }

    fn current_from_config(secret: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(secret) = secret {
            anyhow::ensure!(secret.len() >= MIN_SECRET_LEN, "the secret must be at least {MIN_SECRET_LEN} characters");
            return Ok(Signer::new(secret.as_bytes()));
        }
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= MIN_SECRET_LEN => return Ok(Signer::new(&bytes)),
            Ok(_) => anyhow::bail!("the secret file {} is too short", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        std::fs::create_dir_all(data_dir)?;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let encoded = URL_SAFE_NO_PAD.encode(bytes);
        write_private(&path, encoded.as_bytes())?;
        Ok(Signer::new(encoded.as_bytes()))
    }

    /// Issues a token of the room's first link generation (0), for `room` and `role`, valid
    /// until `expires_at` (Unix seconds).
    pub fn issue(&self, room: &str, role: Role, expires_at: u64) -> String {
        self.issue_at(room, role, expires_at, 0)
    }

    /// Issues a token of link generation `generation`.
    pub fn issue_at(&self, room: &str, role: Role, expires_at: u64, generation: u64) -> String {
        let payload = format!("{room}|{}|{expires_at}|{generation}", role.as_str());
        let signed = format!("{VERSION_2}.{}.{}", self.current.id, URL_SAFE_NO_PAD.encode(payload));
        let mac = self.current.mac(signed.as_bytes()).finalize().into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Verifies `token` for `room` at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, room: &str, now: u64) -> Result<Grant, TokenError> {
        let grant = self.verify_any_room(token, now)?;
        if grant.room != room {
            return Err(TokenError::WrongRoom);
        }
        Ok(grant)
    }

    /// Verifies `token` whatever room it names.
    pub fn verify_any_room(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let parts: Vec<&str> = token.splitn(5, '.').collect();
        let grant = match parts.as_slice() {
            [VERSION_2, kid, payload, mac] => {
                let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
                let key = self.keys().find(|k| k.id == *kid).ok_or(TokenError::BadSignature)?;
                let signed = &token[..token.len() - parts[3].len() - 1];
                key.mac(signed.as_bytes()).verify_slice(&mac).map_err(|_| TokenError::BadSignature)?;
                let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
                parse_payload(&payload, true).ok_or(TokenError::Malformed)?
            }
            [VERSION_1, payload, mac] => {
                let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
                let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
                // Each comparison is in constant time; which key matched is not a secret.
                if !self.keys().any(|k| k.mac(&payload).verify_slice(&mac).is_ok()) {
                    return Err(TokenError::BadSignature);
                }
                parse_payload(&payload, false).ok_or(TokenError::Malformed)?
            }
            _ => return Err(TokenError::Malformed),
        };
        if now >= grant.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }

    /// The current key first, then the previous ones.
    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(&self.previous)
    }
}

/// Parses `room|role|expiry` and, with `generation`, `|generation` after it.
fn parse_payload(payload: &[u8], generation: bool) -> Option<Grant> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.split('|');
    let (Some(room), Some(role), Some(expiry)) = (fields.next(), fields.next(), fields.next()) else {
        return None;
    };
    let generation = if generation { fields.next()?.parse().ok()? } else { 0 };
    if fields.next().is_some() {
        return None;
    }
    let role = match role {
        "leader" => Role::Leader,
        "member" => Role::Member,
        "observer" => Role::Observer,
        _ => return None,
    };
    Some(Grant { room: room.to_owned(), role, expires_at: expiry.parse().ok()?, generation })
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"another secret, also long enough!!";

    fn signer() -> Signer {
        Signer::new(SECRET)
    }

    #[test]
    fn an_issued_token_verifies_for_its_room_and_role() {
        let token = signer().issue("room1", Role::Leader, NOW + 60);
        let grant = signer().verify(&token, "room1", NOW).unwrap();
        assert_eq!(grant.role, Role::Leader);
    }

    #[test]
    fn refusals_are_specific() {
        let s = signer();
        let token = s.issue("room1", Role::Member, NOW + 60);
        assert_eq!(s.verify(&token, "room2", NOW), Err(TokenError::WrongRoom));
        assert_eq!(s.verify(&token, "room1", NOW + 60), Err(TokenError::Expired));
        assert_eq!(s.verify("", "room1", NOW), Err(TokenError::Missing));
        assert_eq!(s.verify("v1.abc", "room1", NOW), Err(TokenError::Malformed));
        let other = Signer::new(OTHER);
        assert_eq!(other.verify(&token, "room1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_role_cannot_be_raised_by_editing_the_payload() {
        let s = signer();
        let token = s.issue("room1", Role::Member, NOW + 60);
        let mac = token.rsplit('.').next().unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(format!("room1|leader|{}|0", NOW + 60));
        let forged = format!("v2.{}.{forged_payload}.{mac}", s.key_id());
        assert_eq!(s.verify(&forged, "room1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_generation_cannot_be_raised_by_editing_the_payload() {
        let s = signer();
        let token = s.issue_at("room1", Role::Member, NOW + 60, 1);
        assert_eq!(s.verify(&token, "room1", NOW).unwrap().generation, 1);
        let mac = token.rsplit('.').next().unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(format!("room1|member|{}|2", NOW + 60));
        let forged = format!("v2.{}.{forged_payload}.{mac}", s.key_id());
        assert_eq!(s.verify(&forged, "room1", NOW), Err(TokenError::BadSignature));
    }

    /// A token of the first format, signed as the server signed them before key ids.
    fn v1_token(secret: &[u8], payload: &str) -> String {
        let mac = Key::new(secret).mac(payload.as_bytes()).finalize().into_bytes();
        format!("v1.{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac))
    }

    #[test]
    fn first_format_tokens_are_still_accepted_as_generation_zero() {
        let token = v1_token(SECRET, &format!("room1|observer|{}", NOW + 60));
        let grant = signer().verify(&token, "room1", NOW).unwrap();
        assert_eq!((grant.role, grant.generation), (Role::Observer, 0));
        // Their MAC still covers the payload: an edited role is refused.
        let mac = token.rsplit('.').next().unwrap();
        let forged = format!("v1.{}.{mac}", URL_SAFE_NO_PAD.encode(format!("room1|leader|{}", NOW + 60)));
        assert_eq!(signer().verify(&forged, "room1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_token_names_its_key_without_revealing_the_secret() {
        let token = signer().issue("room1", Role::Member, NOW + 60);
        let kid = token.split('.').nth(1).unwrap();
        assert_eq!(kid, signer().key_id());
        assert_ne!(kid, Signer::new(OTHER).key_id(), "another secret has another id");
        let secret = std::str::from_utf8(SECRET).unwrap();
        assert!(!token.contains(secret) && !kid.contains(&secret[..8]));
        assert!(!token.contains(&URL_SAFE_NO_PAD.encode(SECRET)[..12]));
    }

    #[test]
    fn previous_secrets_are_accepted_during_a_rotation_and_never_sign() {
        let old = Signer::new(OTHER);
        let old_token = old.issue_at("room1", Role::Member, NOW + 60, 3);
        let old_v1 = v1_token(OTHER, &format!("room1|member|{}", NOW + 60));
        // Before the rotation's second secret is configured, the new one alone refuses them.
        assert_eq!(signer().verify(&old_token, "room1", NOW), Err(TokenError::BadSignature));
        assert_eq!(signer().verify(&old_v1, "room1", NOW), Err(TokenError::BadSignature));
        let rotating = signer().with_previous(&[OTHER]);
        assert_eq!(rotating.verify(&old_token, "room1", NOW).unwrap().generation, 3);
        assert!(rotating.verify(&old_v1, "room1", NOW).is_ok());
        // New links are signed with the current secret: a node that dropped the previous one
        // (or never had it) accepts them.
        let fresh = rotating.issue("room1", Role::Member, NOW + 60);
        assert!(signer().verify(&fresh, "room1", NOW).is_ok());
        assert_eq!(old.verify(&fresh, "room1", NOW), Err(TokenError::BadSignature));
        // A token naming a key that is held, with the MAC of another key, is refused.
        let mac = old_token.rsplit('.').next().unwrap();
        let payload = old_token.split('.').nth(2).unwrap();
        let swapped = format!("v2.{}.{payload}.{mac}", rotating.key_id());
        assert_eq!(rotating.verify(&swapped, "room1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn short_previous_secrets_are_refused_at_start() {
        let dir = std::env::temp_dir();
        let secret = std::str::from_utf8(SECRET).unwrap();
        let short = ["too short".to_owned()];
        assert!(Signer::from_config(Some(secret), &short, &dir).is_err());
        let long = [std::str::from_utf8(OTHER).unwrap().to_owned()];
        let signer = Signer::from_config(Some(secret), &long, &dir).unwrap();
        let old = Signer::new(OTHER).issue("r", Role::Leader, NOW + 60);
        assert!(signer.verify(&old, "r", NOW).is_ok());
    }

    #[test]
    fn malformed_tokens_of_either_format_are_refused() {
        let s = signer();
        let kid = s.key_id().to_owned();
        for token in [
            "v2.abc".to_owned(),
            format!("v2.{kid}.abc"),
            format!("v2.{kid}.a.b.c"),
            "v3.a.b.c".to_owned(),
            format!("v2.{kid}.AAAA.!!"),
        ] {
            assert_eq!(s.verify(&token, "room1", NOW), Err(TokenError::Malformed), "{token}");
        }
        // A well-signed payload without a generation is malformed.
        let payload = URL_SAFE_NO_PAD.encode(format!("room1|member|{}", NOW + 60));
        let signed = format!("v2.{kid}.{payload}");
        let mac = s.current.mac(signed.as_bytes()).finalize().into_bytes();
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac));
        assert_eq!(s.verify(&token, "room1", NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn the_generated_secret_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("balint-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Signer::from_config(None, &[], &dir).unwrap();
        let token = first.issue("r", Role::Member, NOW + 60);
        let second = Signer::from_config(None, &[], &dir).unwrap();
        assert!(second.verify(&token, "r", NOW).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

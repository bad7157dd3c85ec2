//! Room links: tokens signed with HMAC-SHA256 that name a room, a role and an expiry.
//!
//! A token is `v1.<payload>.<mac>`, both parts base64url without padding. The payload is
//! `room|role|expiry` (expiry in Unix seconds). Verification recomputes the MAC and compares
//! it in constant time (`Mac::verify_slice`) before reading the payload.

use std::path::Path;

use balint_proto::room::Role;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";
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
}

/// Why a token was refused. Deliberately coarse towards clients (all are 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// The token is not of the `v1.payload.mac` shape or its payload does not parse.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match: forged or signed with another secret.
    #[error("bad token signature")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("expired token")]
    Expired,
    /// The token is valid but for another room.
    #[error("token for another room")]
    WrongRoom,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer over `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Signer { key: secret.to_vec() }
    }

    /// The configured secret, or the one kept in `data_dir`, generated on first start.
    pub fn from_config(secret: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
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

    /// Issues a token for `room` and `role`, valid until `expires_at` (Unix seconds).
    pub fn issue(&self, room: &str, role: Role, expires_at: u64) -> String {
        let payload = format!("{room}|{}|{expires_at}", role.as_str());
        let mac = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{VERSION}.{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac))
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
        let mut parts = token.split('.');
        let (Some(VERSION), Some(payload), Some(mac), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        self.mac(&payload).verify_slice(&mac).map_err(|_| TokenError::BadSignature)?;
        let grant = parse_payload(&payload).ok_or(TokenError::Malformed)?;
        if now >= grant.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(payload);
        mac
    }
}

fn parse_payload(payload: &[u8]) -> Option<Grant> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.split('|');
    let (Some(room), Some(role), Some(expiry), None) = (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    let role = match role {
        "leader" => Role::Leader,
        "member" => Role::Member,
        "observer" => Role::Observer,
        _ => return None,
    };
    Some(Grant { room: room.to_owned(), role, expires_at: expiry.parse().ok()? })
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

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef0123456789abcdef")
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
        let other = Signer::new(b"another secret, also long enough!!");
        assert_eq!(other.verify(&token, "room1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_role_cannot_be_raised_by_editing_the_payload() {
        let s = signer();
        let token = s.issue("room1", Role::Member, NOW + 60);
        let mac = token.rsplit('.').next().unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(format!("room1|leader|{}", NOW + 60));
        let forged = format!("v1.{forged_payload}.{mac}");
        assert_eq!(s.verify(&forged, "room1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn the_generated_secret_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("balint-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Signer::from_config(None, &dir).unwrap();
        let token = first.issue("r", Role::Member, NOW + 60);
        let second = Signer::from_config(None, &dir).unwrap();
        assert!(second.verify(&token, "r", NOW).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

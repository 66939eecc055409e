//! Dashboard sessions: a signed, expiring cookie naming the auth id, and the CSRF token of
//! each session.
//!
//! The cookie is `<auth id hex>.<expiry unix s>.<nonce hex>.<mac hex>`, the MAC an
//! HMAC-SHA256 under a secret derived from the center's signing key (every center of a
//! deployment holds the same key, so any of them accepts the cookie). The MAC also covers a
//! digest of the auth id's current key: changing or revoking the key ends its sessions. The
//! key itself never reaches the browser; nothing is kept in memory, so a restarted center
//! still knows its sessions.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub const COOKIE: &str = "elves_session";
/// How long a sign-in lasts.
pub const SESSION_TTL_S: u64 = 8 * 3600;

/// The secret sessions are signed with.
#[derive(Clone)]
pub struct SessionKeys {
    secret: [u8; 32],
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub auth_id: String,
    pub expires_s: u64,
    /// Random per sign-in; the CSRF token is derived from it.
    nonce: String,
}

impl SessionKeys {
    /// The secret derived from the center's Ed25519 key: a signature of a fixed text is
    /// deterministic and only holders of the key can make it.
    pub fn from_signer(signer: &elves_shared::crypto::InstructionSigner) -> SessionKeys {
        let signature = signer.sign(b"elves dashboard session secret v1");
        SessionKeys {
            secret: Sha256::digest(signature).into(),
        }
    }

    #[cfg(test)]
    fn from_secret(secret: [u8; 32]) -> SessionKeys {
        SessionKeys { secret }
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => return Vec::new(),
        };
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// A new session's cookie value for `auth_id`, whose key is `auth_key`.
    pub fn issue(&self, auth_id: &str, auth_key: &str, now_s: u64) -> String {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let expires_s = now_s.saturating_add(SESSION_TTL_S);
        self.encode(auth_id, auth_key, expires_s, &nonce)
    }

    fn encode(&self, auth_id: &str, auth_key: &str, expires_s: u64, nonce: &str) -> String {
        let mac = self.session_mac(auth_id, auth_key, expires_s, nonce);
        format!(
            "{}.{expires_s}.{nonce}.{}",
            hex::encode(auth_id),
            hex::encode(mac)
        )
    }

    fn session_mac(&self, auth_id: &str, auth_key: &str, expires_s: u64, nonce: &str) -> Vec<u8> {
        let key_digest = Sha256::digest(auth_key.as_bytes());
        self.mac(&[
            b"session",
            auth_id.as_bytes(),
            expires_s.to_string().as_bytes(),
            nonce.as_bytes(),
            &key_digest,
        ])
    }

    /// The session a cookie value names, if its MAC is right, it has not expired, and its
    /// auth id still has the key it signed in with (`key_of` answers from the registry).
    pub fn verify(
        &self,
        cookie: &str,
        now_s: u64,
        key_of: impl FnOnce(&str) -> Option<String>,
    ) -> Option<Session> {
        let mut parts = cookie.split('.');
        let (auth_hex, expires, nonce, mac_hex) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let auth_id = String::from_utf8(hex::decode(auth_hex).ok()?).ok()?;
        let expires_s: u64 = expires.parse().ok()?;
        if expires_s <= now_s {
            return None;
        }
        let given = hex::decode(mac_hex).ok()?;
        let auth_key = key_of(&auth_id)?;
        let expected = self.session_mac(&auth_id, &auth_key, expires_s, nonce);
        if !bool::from(expected.ct_eq(&given)) {
            return None;
        }
        Some(Session {
            auth_id,
            expires_s,
            nonce: nonce.to_string(),
        })
    }

    /// The token every changing form of `session` must carry.
    pub fn csrf_token(&self, session: &Session) -> String {
        hex::encode(self.mac(&[b"csrf", session.nonce.as_bytes()]))
    }

    /// Whether `token` is `session`'s CSRF token (constant time).
    pub fn csrf_ok(&self, session: &Session, token: &str) -> bool {
        let expected = self.csrf_token(session);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// Whether `given` is `expected` (constant time): the sign-in's key check.
pub fn key_matches(expected: &str, given: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::from_secret([7; 32])
    }

    fn key_of(key: &'static str) -> impl FnOnce(&str) -> Option<String> {
        move |_| Some(key.to_string())
    }

    #[test]
    fn an_issued_cookie_verifies_until_it_expires() {
        let cookie = keys().issue("ops", "k1", 1_000);
        let session = keys().verify(&cookie, 1_001, key_of("k1"));
        assert_eq!(session.map(|s| s.auth_id), Some("ops".to_string()));
        assert!(keys()
            .verify(&cookie, 1_000 + SESSION_TTL_S, key_of("k1"))
            .is_none());
    }

    #[test]
    fn a_changed_or_revoked_key_ends_the_session() {
        let cookie = keys().issue("ops", "k1", 1_000);
        assert!(keys().verify(&cookie, 1_001, key_of("k2")).is_none());
        assert!(keys().verify(&cookie, 1_001, |_| None).is_none());
    }

    #[test]
    fn a_tampered_cookie_or_another_secret_is_refused() {
        let cookie = keys().issue("ops", "k1", 1_000);
        let other_id = cookie.replacen(&hex::encode("ops"), &hex::encode("admin"), 1);
        assert!(keys().verify(&other_id, 1_001, key_of("k1")).is_none());
        let longer = cookie.replacen(
            &format!(".{}.", 1_000 + SESSION_TTL_S),
            &format!(".{}.", 9_000_000),
            1,
        );
        assert!(keys().verify(&longer, 1_001, key_of("k1")).is_none());
        let other_center = SessionKeys::from_secret([8; 32]);
        assert!(other_center.verify(&cookie, 1_001, key_of("k1")).is_none());
        assert!(keys().verify("garbage", 1_001, key_of("k1")).is_none());
        assert!(keys().verify("a.b.c.d.e", 1_001, key_of("k1")).is_none());
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session() {
        let first = keys()
            .verify(&keys().issue("ops", "k1", 1_000), 1_001, key_of("k1"))
            .expect("valid");
        let second = keys()
            .verify(&keys().issue("ops", "k1", 1_000), 1_001, key_of("k1"))
            .expect("valid");
        let token = keys().csrf_token(&first);
        assert!(keys().csrf_ok(&first, &token));
        assert!(!keys().csrf_ok(&second, &token));
        assert!(!keys().csrf_ok(&first, ""));
    }
}

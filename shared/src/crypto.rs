//! Instruction signing (SPEC §5): the center signs the exact body bytes of every instruction with
//! Ed25519; agents hold only public keys. Anyone with broker access but not the center key cannot
//! make an agent run anything.
//!
//! Keys are stored as hex: a 32-byte seed for the signing key, 32 bytes for a public key.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key {0}: expected 64 hex characters")]
    BadHex(String),
    #[error("public key {0} is not a valid ed25519 point")]
    BadPublicKey(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("instruction is not signed")]
    Unsigned,
    #[error("instruction signed with unknown key id {0:?}")]
    UnknownKey(String),
    #[error("instruction signature does not verify")]
    BadSignature,
}

/// The center's private half: the key it signs with now, and the public halves of the keys it
/// signed with before (a rotation, see `use_key`), so that what it signed earlier, such as a
/// download link, still checks out against its own keys until that key is retired.
pub struct InstructionSigner {
    current: RwLock<Arc<ActiveKey>>,
    earlier: RwLock<BTreeMap<String, VerifyingKey>>,
}

struct ActiveKey {
    key_id: String,
    key: SigningKey,
}

impl InstructionSigner {
    fn of(key_id: &str, key: SigningKey) -> Self {
        InstructionSigner {
            current: RwLock::new(Arc::new(ActiveKey {
                key_id: key_id.to_string(),
                key,
            })),
            earlier: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn generate(key_id: &str) -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut seed);
        Self::of(key_id, SigningKey::from_bytes(&seed))
    }

    pub fn from_seed_hex(key_id: &str, seed_hex: &str) -> Result<Self, KeyError> {
        let seed = parse_32(seed_hex.trim()).ok_or_else(|| KeyError::BadHex(key_id.to_string()))?;
        Ok(Self::of(key_id, SigningKey::from_bytes(&seed)))
    }

    /// Loads the key at `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(key_id: &str, path: &Path) -> Result<Self, KeyError> {
        let io_error = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_seed_hex(key_id, &text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::generate(key_id);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io_error)?;
                }
                write_private(path, &signer.seed_hex()).map_err(io_error)?;
                Ok(signer)
            }
            Err(err) => Err(io_error(err)),
        }
    }

    fn active(&self) -> Arc<ActiveKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The id of the key signing now.
    pub fn key_id(&self) -> String {
        self.active().key_id.clone()
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.active().key.verifying_key().to_bytes())
    }

    /// The private seed (hex), for writing the key to its file.
    pub fn seed_hex(&self) -> String {
        hex::encode(self.active().key.to_bytes())
    }

    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        self.sign_with_key_id(body).1
    }

    /// The signature of `body` and the id of the key that made it, taken together: a key
    /// switch between asking for the id and signing would otherwise send a mismatched pair.
    pub fn sign_with_key_id(&self, body: &[u8]) -> (String, Vec<u8>) {
        let active = self.active();
        (
            active.key_id.clone(),
            active.key.sign(body).to_bytes().to_vec(),
        )
    }

    /// Signs from now on with `next`'s key; the key signing until now stays known to
    /// [`InstructionSigner::signed_by_me`] until [`InstructionSigner::forget`].
    pub fn use_key(&self, next: &InstructionSigner) {
        let next = next.active();
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut earlier = self
            .earlier
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        earlier.insert(current.key_id.clone(), current.key.verifying_key());
        earlier.remove(&next.key_id);
        *current = next;
    }

    /// Stops accepting what the key `key_id` signed before (a retired key).
    pub fn forget(&self, key_id: &str) {
        self.earlier
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key_id);
    }

    /// Whether `signature` over `body` was made by this signer's current key or one it used
    /// before and has not forgotten.
    pub fn signed_by_me(&self, body: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        if self
            .active()
            .key
            .verifying_key()
            .verify(body, &signature)
            .is_ok()
        {
            return true;
        }
        self.earlier
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .any(|key| key.verify(body, &signature).is_ok())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The agent's set of trusted center public keys, by key id. Clones share the set: an agent
/// that reloads its keys (a rotation, see [`InstructionVerifier::replace_keys`]) reaches every
/// holder at once, without a restart.
#[derive(Clone, Default)]
pub struct InstructionVerifier {
    keys: Arc<RwLock<BTreeMap<String, VerifyingKey>>>,
}

impl InstructionVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_public_key_hex(&mut self, key_id: &str, public_hex: &str) -> Result<(), KeyError> {
        let bytes =
            parse_32(public_hex.trim()).ok_or_else(|| KeyError::BadHex(key_id.to_string()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::BadPublicKey(key_id.to_string()))?;
        self.keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key_id.to_string(), key);
        Ok(())
    }

    /// Trusts exactly the keys of `other` from now on, in this verifier and all its clones.
    pub fn replace_keys(&self, other: &InstructionVerifier) {
        let next = other
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
    }

    /// The ids of the trusted keys.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn verify(
        &self,
        body: &[u8],
        key_id: Option<&str>,
        signature: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(VerifyError::Unsigned);
        };
        let key = *self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key_id)
            .ok_or_else(|| VerifyError::UnknownKey(key_id.to_string()))?;
        let signature = Signature::from_slice(signature).map_err(|_| VerifyError::BadSignature)?;
        key.verify(body, &signature)
            .map_err(|_| VerifyError::BadSignature)
    }
}

fn parse_32(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_body_verifies_and_tampering_is_caught() {
        let signer = InstructionSigner::generate("center");
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &signer.public_key_hex())
            .unwrap();
        let body = b"run apptest";
        let sig = signer.sign(body);
        assert_eq!(verifier.verify(body, Some("center"), Some(&sig)), Ok(()));
        assert_eq!(
            verifier.verify(b"run rm -rf", Some("center"), Some(&sig)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verifier.verify(body, Some("other"), Some(&sig)),
            Err(VerifyError::UnknownKey("other".into()))
        );
        assert_eq!(
            verifier.verify(body, None, None),
            Err(VerifyError::Unsigned)
        );
        assert_eq!(
            verifier.verify(body, Some("center"), Some(&sig[..10])),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn a_forger_with_its_own_key_is_refused() {
        let center = InstructionSigner::generate("center");
        let forger = InstructionSigner::generate("center");
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &center.public_key_hex())
            .unwrap();
        let body = b"x";
        assert_eq!(
            verifier.verify(body, Some("center"), Some(&forger.sign(body))),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("elves-key-{}", rand::random::<u64>()));
        let path = dir.join("center.key");
        let first = InstructionSigner::load_or_create("c", &path).unwrap();
        let second = InstructionSigner::load_or_create("c", &path).unwrap();
        assert_eq!(first.public_key_hex(), second.public_key_hex());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_switched_signer_signs_with_the_new_key_and_still_knows_the_old_one() {
        let signer = InstructionSigner::generate("k1");
        let old_signature = signer.sign(b"link");
        let next = InstructionSigner::generate("k2");
        signer.use_key(&next);
        let (key_id, signature) = signer.sign_with_key_id(b"x");
        assert_eq!(key_id, "k2");
        assert_eq!(signer.public_key_hex(), next.public_key_hex());
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("k2", &next.public_key_hex())
            .unwrap();
        assert_eq!(verifier.verify(b"x", Some("k2"), Some(&signature)), Ok(()));
        assert!(signer.signed_by_me(b"link", &old_signature));
        signer.forget("k1");
        assert!(!signer.signed_by_me(b"link", &old_signature));
        assert!(signer.signed_by_me(b"x", &signature));
    }

    #[test]
    fn replacing_a_verifiers_keys_reaches_its_clones() {
        let (k1, k2) = (
            InstructionSigner::generate("k1"),
            InstructionSigner::generate("k2"),
        );
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("k1", &k1.public_key_hex())
            .unwrap();
        let held = verifier.clone();
        let mut next = InstructionVerifier::new();
        next.add_public_key_hex("k2", &k2.public_key_hex()).unwrap();
        verifier.replace_keys(&next);
        assert_eq!(held.key_ids(), vec!["k2".to_string()]);
        assert_eq!(
            held.verify(b"x", Some("k1"), Some(&k1.sign(b"x"))),
            Err(VerifyError::UnknownKey("k1".into()))
        );
        assert_eq!(held.verify(b"x", Some("k2"), Some(&k2.sign(b"x"))), Ok(()));
    }

    #[test]
    fn bad_key_text_is_an_error() {
        assert!(InstructionSigner::from_seed_hex("c", "zz").is_err());
        let mut verifier = InstructionVerifier::new();
        assert!(verifier.add_public_key_hex("c", "00").is_err());
    }
}

//! Instruction signing (SPEC §5): the center signs the exact body bytes of every instruction with
//! Ed25519; agents hold only public keys. Anyone with broker access but not the center key cannot
//! make an agent run anything.
//!
//! Keys are stored as hex: a 32-byte seed for the signing key, 32 bytes for a public key.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::collections::BTreeMap;
use std::path::Path;

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

/// The center's private half.
pub struct InstructionSigner {
    key_id: String,
    key: SigningKey,
}

impl InstructionSigner {
    pub fn generate(key_id: &str) -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut seed);
        InstructionSigner {
            key_id: key_id.to_string(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn from_seed_hex(key_id: &str, seed_hex: &str) -> Result<Self, KeyError> {
        let seed = parse_32(seed_hex.trim()).ok_or_else(|| KeyError::BadHex(key_id.to_string()))?;
        Ok(InstructionSigner {
            key_id: key_id.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
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
                write_private(path, &hex::encode(signer.key.to_bytes())).map_err(io_error)?;
                Ok(signer)
            }
            Err(err) => Err(io_error(err)),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        self.key.sign(body).to_bytes().to_vec()
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

/// The agent's set of trusted center public keys, by key id.
#[derive(Clone, Default)]
pub struct InstructionVerifier {
    keys: BTreeMap<String, VerifyingKey>,
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
        self.keys.insert(key_id.to_string(), key);
        Ok(())
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
        let key = self
            .keys
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
    fn bad_key_text_is_an_error() {
        assert!(InstructionSigner::from_seed_hex("c", "zz").is_err());
        let mut verifier = InstructionVerifier::new();
        assert!(verifier.add_public_key_hex("c", "00").is_err());
    }
}

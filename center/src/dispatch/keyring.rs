//! The center's instruction signing keys and their rotation (`elves keys rotate`).
//!
//! A center starts with one key (`[keys] signing_key`, `key_id`). A rotation walks three
//! steps, each an admin call, none of which stops a task:
//! - `add`: a new key is made beside the old one. The center does not sign with it yet; it is
//!   listed with the keys agents should trust (`keys/list`, and every `agent/enroll` config).
//! - `use`: once the agents trust it, the center signs with it from the next message on. The
//!   old key stays trusted: instructions already signed with it (queued in the broker) still
//!   run, and links it signed stay valid.
//! - `retire`: the old key is dropped from the trusted keys and the center no longer accepts
//!   what it signed; agents that reload their configuration without it refuse its
//!   instructions from then on.
//!
//! The ring is kept in `[keys] ring` (a TOML file in the data directory) beside the keys' seed
//! files, so a restarted center signs with the key it was told to use. Without the file the
//! ring is the configured key alone.

use crate::config::CenterConfig;
use elves_shared::crypto::{InstructionSigner, KeyError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("key ring {path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A request the ring refuses as it stands (unknown id, wrong step): nothing changed.
    #[error("{0}")]
    Refused(String),
}

/// Where a key is in its rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Added, trusted by agents that were given it, not signing yet.
    Staged,
    /// The key the center signs with.
    Signing,
    /// Signed before; still trusted and accepted until retired.
    Trusted,
    /// No longer trusted by anyone; never used again.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Staged => "staged",
            KeyState::Signing => "signing",
            KeyState::Trusted => "trusted",
            KeyState::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingKey {
    pub id: String,
    /// The seed file; relative paths are under the data directory.
    pub file: PathBuf,
    pub public_key: String,
    pub state: KeyState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingFile {
    #[serde(default, rename = "key")]
    keys: Vec<RingKey>,
}

/// The keys of one center, and the signer every actor signs with (switched in place by `use`).
pub struct KeyRing {
    signer: Arc<InstructionSigner>,
    keys: Mutex<Vec<RingKey>>,
    data_dir: PathBuf,
    ring_path: PathBuf,
}

impl KeyRing {
    /// The ring of `config`: its ring file when there is one, else the configured key (made on
    /// first start).
    pub fn load(config: &CenterConfig) -> Result<KeyRing, RingError> {
        let ring_path = config.key_ring_path();
        let data_dir = config.data_dir.clone();
        let file_error = |message: String| RingError::File {
            path: ring_path.display().to_string(),
            message,
        };
        let keys = match std::fs::read_to_string(&ring_path) {
            Ok(text) => {
                let file: RingFile =
                    toml::from_str(&text).map_err(|err| file_error(err.to_string()))?;
                file.keys
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let signer = InstructionSigner::load_or_create(
                    &config.keys.key_id,
                    &config.signing_key_path(),
                )?;
                vec![RingKey {
                    id: config.keys.key_id.clone(),
                    // As configured: relative paths stay relative to the data directory.
                    file: config.keys.signing_key.clone(),
                    public_key: signer.public_key_hex(),
                    state: KeyState::Signing,
                }]
            }
            Err(err) => return Err(file_error(err.to_string())),
        };
        let signing: Vec<&RingKey> = keys
            .iter()
            .filter(|key| key.state == KeyState::Signing)
            .collect();
        let [signing] = signing.as_slice() else {
            return Err(file_error(format!(
                "exactly one key must be `signing`, found {}",
                signing.len()
            )));
        };
        let load = |key: &RingKey| -> Result<InstructionSigner, RingError> {
            let path = resolve(&data_dir, &key.file);
            let seed = std::fs::read_to_string(&path).map_err(|err| RingError::File {
                path: path.display().to_string(),
                message: err.to_string(),
            })?;
            Ok(InstructionSigner::from_seed_hex(&key.id, &seed)?)
        };
        // The trusted keys first, then the signing one: `use_key` keeps each earlier key
        // known, so links signed before the rotation stay valid until the key is retired.
        let mut signer: Option<InstructionSigner> = None;
        for key in keys.iter().filter(|key| key.state == KeyState::Trusted) {
            let loaded = load(key)?;
            match &signer {
                Some(current) => current.use_key(&loaded),
                None => signer = Some(loaded),
            }
        }
        let loaded = load(signing)?;
        let signer = match signer {
            Some(current) => {
                current.use_key(&loaded);
                current
            }
            None => loaded,
        };
        Ok(KeyRing {
            signer: Arc::new(signer),
            keys: Mutex::new(keys),
            data_dir,
            ring_path,
        })
    }

    /// The signer the actors share: a `use` switches it for all of them at once.
    pub fn signer(&self) -> Arc<InstructionSigner> {
        self.signer.clone()
    }

    pub fn keys(&self) -> Vec<RingKey> {
        self.lock().clone()
    }

    /// What agents should trust: every key not retired, id → public key (hex).
    pub fn trusted(&self) -> BTreeMap<String, String> {
        self.lock()
            .iter()
            .filter(|key| key.state != KeyState::Retired)
            .map(|key| (key.id.clone(), key.public_key.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RingKey>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes a new key `id` (staged); answers it.
    pub fn add(&self, id: &str) -> Result<RingKey, RingError> {
        if !elves_shared::names::is_valid_name(id) {
            return Err(RingError::Refused(format!(
                "key id must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,63}}, got {id:?}"
            )));
        }
        let mut keys = self.lock();
        if keys.iter().any(|key| key.id == id) {
            return Err(RingError::Refused(format!(
                "key id {id} is taken (ids are never reused, retired ones included)"
            )));
        }
        let file = PathBuf::from("keys").join(format!("{id}.key"));
        let path = resolve(&self.data_dir, &file);
        if path.exists() {
            return Err(RingError::Refused(format!(
                "a key file for {id} already exists; remove it or pick another id"
            )));
        }
        let signer = InstructionSigner::load_or_create(id, &path)?;
        let added = RingKey {
            id: id.to_string(),
            file,
            public_key: signer.public_key_hex(),
            state: KeyState::Staged,
        };
        let mut next = keys.clone();
        next.push(added.clone());
        if let Err(err) = self.save(&next) {
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        *keys = next;
        Ok(added)
    }

    /// Signs with `id` from now on; the key signing until now becomes `trusted`.
    pub fn use_key(&self, id: &str) -> Result<RingKey, RingError> {
        let mut keys = self.lock();
        let Some(position) = keys.iter().position(|key| key.id == id) else {
            return Err(RingError::Refused(format!("no key {id} in the ring")));
        };
        match keys[position].state {
            KeyState::Staged | KeyState::Trusted => {}
            KeyState::Signing => {
                return Err(RingError::Refused(format!("key {id} signs already")));
            }
            KeyState::Retired => {
                return Err(RingError::Refused(format!(
                    "key {id} is retired; add a new key instead"
                )));
            }
        }
        let path = resolve(&self.data_dir, &keys[position].file);
        let seed = std::fs::read_to_string(&path).map_err(|err| RingError::File {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        let next_signer = InstructionSigner::from_seed_hex(id, &seed)?;
        let mut next = keys.clone();
        for key in next.iter_mut() {
            if key.state == KeyState::Signing {
                key.state = KeyState::Trusted;
            }
        }
        next[position].state = KeyState::Signing;
        self.save(&next)?;
        self.signer.use_key(&next_signer);
        *keys = next;
        Ok(keys[position].clone())
    }

    /// Retires `id`: not trusted, not accepted, never used again. The signing key cannot be.
    pub fn retire(&self, id: &str) -> Result<RingKey, RingError> {
        let mut keys = self.lock();
        let Some(position) = keys.iter().position(|key| key.id == id) else {
            return Err(RingError::Refused(format!("no key {id} in the ring")));
        };
        match keys[position].state {
            KeyState::Signing => {
                return Err(RingError::Refused(format!(
                    "key {id} is the signing key: `use` another one first"
                )));
            }
            KeyState::Retired => {
                return Err(RingError::Refused(format!("key {id} is retired already")));
            }
            KeyState::Staged | KeyState::Trusted => {}
        }
        let mut next = keys.clone();
        next[position].state = KeyState::Retired;
        self.save(&next)?;
        self.signer.forget(id);
        *keys = next;
        Ok(keys[position].clone())
    }

    /// Writes the ring beside itself and renames it over the old file: a crash leaves one or
    /// the other, whole.
    fn save(&self, keys: &[RingKey]) -> Result<(), RingError> {
        let file_error = |message: String| RingError::File {
            path: self.ring_path.display().to_string(),
            message,
        };
        let text = toml::to_string(&RingFile {
            keys: keys.to_vec(),
        })
        .map_err(|err| file_error(err.to_string()))?;
        if let Some(parent) = self.ring_path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| file_error(err.to_string()))?;
        }
        let staging = self.ring_path.with_extension("toml.new");
        std::fs::write(&staging, text).map_err(|err| file_error(err.to_string()))?;
        std::fs::rename(&staging, &self.ring_path).map_err(|err| file_error(err.to_string()))
    }
}

fn resolve(data_dir: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_path_buf()
    } else {
        data_dir.join(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::crypto::InstructionVerifier;

    fn config(dir: &Path) -> CenterConfig {
        let text = format!(
            "data_dir = {:?}\n[auth]\nauth_id = \"admin\"\nauth_key = \"0123456789abcdef\"\n",
            dir.display().to_string()
        );
        toml::from_str(&text).unwrap()
    }

    fn verifies(ring: &KeyRing, id: &str, public_key: &str) -> bool {
        let mut verifier = InstructionVerifier::new();
        verifier.add_public_key_hex(id, public_key).unwrap();
        let (key_id, signature) = ring.signer().sign_with_key_id(b"body");
        verifier
            .verify(b"body", Some(&key_id), Some(&signature))
            .is_ok()
    }

    #[test]
    fn a_rotation_switches_the_signer_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let ring = KeyRing::load(&config).unwrap();
        let first = ring.keys()[0].clone();
        assert_eq!(first.state, KeyState::Signing);
        let added = ring.add("k2").unwrap();
        assert_eq!(ring.trusted().len(), 2);
        // Key files are kept as configured, relative to the data directory.
        let saved = std::fs::read_to_string(config.key_ring_path()).unwrap();
        assert!(saved.contains("file = \"center.key\""), "{saved}");
        assert!(verifies(&ring, &first.id, &first.public_key));
        ring.use_key("k2").unwrap();
        assert!(verifies(&ring, "k2", &added.public_key));
        let restarted = KeyRing::load(&config).unwrap();
        assert!(verifies(&restarted, "k2", &added.public_key));
        assert_eq!(restarted.trusted().len(), 2);
        ring.retire(&first.id).unwrap();
        let restarted = KeyRing::load(&config).unwrap();
        assert_eq!(
            restarted.trusted().keys().cloned().collect::<Vec<_>>(),
            vec!["k2".to_string()]
        );
    }

    #[test]
    fn wrong_steps_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load(&config(dir.path())).unwrap();
        let before = format!("{:?}", ring.keys());
        for (outcome, says) in [
            (ring.add("bad id"), "key id must match"),
            (ring.add("center"), "is taken"),
            (ring.use_key("nope"), "no key nope"),
            (ring.use_key("center"), "signs already"),
            (ring.retire("center"), "is the signing key"),
        ] {
            let err = outcome.unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        assert_eq!(format!("{:?}", ring.keys()), before);
        ring.add("k2").unwrap();
        ring.retire("k2").unwrap();
        let err = ring.use_key("k2").unwrap_err().to_string();
        assert!(err.contains("retired"), "{err}");
    }
}

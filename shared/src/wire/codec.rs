//! MessagePack (named fields) for the bus; JSON only where the spec accepts it (submit).

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bad msgpack body: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    #[error("bad json body: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes with field names so that later versions can add fields.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail: no maps with non-string keys,
    // no I/O. An empty body would be rejected by every consumer, which is the loud outcome we want.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(serde_json::from_slice(bytes)?)
}

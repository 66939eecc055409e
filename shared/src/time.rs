//! Wall-clock helpers: the wire carries unix milliseconds everywhere.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, as carried in every wire message.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

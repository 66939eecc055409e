//! The hand-off of store work to tokio's blocking pool: every [`Store`](super::Store) method
//! blocks on diesel, and actors and handlers must never block their own threads on it.

use super::StoreError;

/// Runs blocking store work on the blocking pool.
pub async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    join_outcome(tokio::task::spawn_blocking(work).await)
}

/// The outcome of store work joined from the blocking pool; a panic there becomes a store
/// error instead of taking the caller down with it.
pub fn join_outcome<T>(
    joined: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, StoreError> {
    match joined {
        Ok(outcome) => outcome,
        Err(err) => Err(StoreError::Corrupt(format!("store task panicked: {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_on_the_blocking_pool_is_a_store_error() {
        let outcome: Result<(), StoreError> = blocking(|| panic!("boom")).await;
        assert!(
            matches!(outcome, Err(StoreError::Corrupt(message)) if message.contains("panicked"))
        );
        assert_eq!(blocking(|| Ok(7)).await.ok(), Some(7));
    }
}

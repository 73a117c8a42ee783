//! Bounded waits: every wait in a test is for an event or a condition, and fails the test with
//! what it was waiting for once [`DEADLINE`] passes. Nothing sleeps a fixed time.

use std::future::Future;
use std::time::Duration;

/// The longest any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(DEADLINE, what, future).await
}

/// Awaits `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

//! The relay keeps time on one clock, tokio's, so that tests can pause it (`tokio::time::pause`)
//! and drive timeouts, debounces and expiries without sleeping.

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever when there is none: a `select!` branch for an optional
/// timer.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

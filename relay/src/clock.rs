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

/// Runs `future` with a time limit, `None` when it runs out. The clock is read and a timer
/// armed only if the future does not finish on its first poll: a socket write that fits in the
/// socket's buffer (nearly all of them) then costs neither, where `tokio::time::timeout` reads
/// the clock for every write.
pub(crate) async fn within<F: std::future::Future>(
    limit: std::time::Duration,
    future: F,
) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => tokio::time::timeout(limit, future).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn within_returns_what_finishes_in_time_and_gives_up_on_what_does_not() {
        assert_eq!(within(Duration::from_secs(1), async { 7 }).await, Some(7));
        let later = tokio::time::sleep(Duration::from_millis(500));
        assert_eq!(within(Duration::from_secs(1), later).await, Some(()));
        let never = std::future::pending::<()>();
        let started = Instant::now();
        assert_eq!(within(Duration::from_secs(1), never).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}

//! Small timer helpers shared by the connection, HTTP and WebSocket paths.

use tokio::time::Instant;

/// Sleeps until `at`, or forever when there is no deadline (a disabled limit).
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

//! Small timer helpers shared by the connection, HTTP and WebSocket paths.

use crate::conn::ConnRecord;
use std::time::Duration;
use tokio::time::Instant;

/// Sleeps until `at`, or forever when there is no deadline (a disabled limit).
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The connection's next inactivity deadline for an idle limit `idle`, seen at `now`; `None`
/// when it has passed (idle too long). Activity only moves a deadline later, so the callers'
/// timers are re-armed lazily here instead of on every byte.
pub(crate) fn idle_deadline(rec: &ConnRecord, idle: Duration, now: Instant) -> Option<Instant> {
    let next = Instant::from_std(rec.last_activity()) + idle;
    (next > now).then_some(next)
}

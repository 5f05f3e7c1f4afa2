//! Waiting for the cluster to reach a state, with a deadline and a message saying what was last
//! seen when it did not.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);

/// Polls `probe` until it returns `Ok`, for at most `timeout`. An `Err` means "not yet": the
/// last one is quoted in the timeout error, so a failure says what the cluster looked like.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    until_every(what, timeout, POLL, probe).await
}

/// [`until`], probing every `poll` (for probes that list many objects).
pub async fn until_every<T, F, Fut>(what: &str, timeout: Duration, poll: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                anyhow::bail!("timed out after {}s waiting for {what}; last observation: {last:#}", timeout.as_secs())
            }
            Err(_) => tokio::time::sleep(poll).await,
        }
    }
}

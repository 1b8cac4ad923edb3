//! Bounded waits: a test that waits on something fails with what it waited
//! for instead of hanging.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Generous bound for anything a test waits on.
pub const BOUND: Duration = Duration::from_secs(10);

/// Runs `f` within [`BOUND`], failing the test instead of hanging it.
pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {BOUND:?}"),
    }
}

/// Polls `condition` every 10 ms until it holds, failing after `within`.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(within, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "timed out after {within:?} waiting for {what}"
    );
}

/// Polls the async `probe` every 50 ms until it succeeds, at most `bound`;
/// panics with its last error.
pub async fn within<T, F, Fut>(bound: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + bound;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(error) => error,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {bound:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

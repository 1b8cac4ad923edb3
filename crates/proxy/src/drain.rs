//! Draining: stop accepting, let in-flight work finish, then stop for good.
//!
//! A [`Trigger`] and any number of [`Watch`]es. Every listener and connection
//! holds a `Watch`; the drain is complete when the last one is dropped.

use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Serving,
    /// Stop accepting; finish what is in flight (HTTP/2 GOAWAY, HTTP/1 close after the response).
    Draining,
    /// The drain timeout passed: drop whatever is left.
    Closed,
}

pub struct Trigger(watch::Sender<State>);

#[derive(Clone)]
pub struct Watch(watch::Receiver<State>);

pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(State::Serving);
    (Trigger(tx), Watch(rx))
}

impl Trigger {
    /// Drains, waiting up to `timeout` for every watch to be dropped, then
    /// closes what is left. Returns whether everything finished in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        self.0.send_replace(State::Draining);
        let finished = tokio::time::timeout(timeout, self.0.closed()).await.is_ok();
        if !finished {
            self.0.send_replace(State::Closed);
            // Closing is immediate for the holders; give their tasks a moment to run.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.0.closed()).await;
        }
        finished
    }
}

impl Watch {
    /// Resolves once draining starts.
    pub async fn draining(&mut self) {
        // An error means the trigger is gone, which also ends serving.
        let _ = self.0.wait_for(|s| *s >= State::Draining).await;
    }

    /// Resolves once the drain timeout has passed.
    pub async fn closed(&mut self) {
        let _ = self.0.wait_for(|s| *s == State::Closed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_watches_and_closes_the_slow_ones() {
        let (trigger, watch) = channel();
        let mut quick = watch.clone();
        let mut slow = watch;
        let quick_task = tokio::spawn(async move {
            quick.draining().await;
        });
        let slow_task = tokio::spawn(async move {
            slow.draining().await;
            slow.closed().await;
        });
        assert!(!trigger.drain(Duration::from_secs(5)).await);
        quick_task.await.unwrap();
        slow_task.await.unwrap();

        let (trigger, watch) = channel();
        let mut w = watch;
        let task = tokio::spawn(async move { w.draining().await });
        assert!(trigger.drain(Duration::from_secs(5)).await);
        task.await.unwrap();
    }
}

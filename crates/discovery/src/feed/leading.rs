//! Writers that run only on the leading controller replica: a writer is
//! started when this replica becomes leader and dropped (mid-write or idle)
//! as soon as it stops being one, so a replica that lost its Lease writes
//! nothing more.

use std::future::Future;

use tokio::sync::watch;

/// Runs `writer()` while `leading` is true, restarting it on each new term,
/// until the leadership channel closes. A writer that ends by itself is not
/// restarted until the next term.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, what: &str, mut writer: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let term = leading.wait_for(|leads| *leads).await.map(|_| ());
        if term.is_err() {
            return;
        }
        tracing::info!(writer = what, "leading: writer started");
        tokio::select! {
            () = writer() => {}
            lost = async { leading.wait_for(|leads| !*leads).await.map(|_| ()) } => {
                if lost.is_err() {
                    // No one will ever say otherwise: keep writing.
                    writer().await;
                    return;
                }
            }
        }
        let _ = leading.wait_for(|leads| !*leads).await.map(|_| ());
        tracing::info!(writer = what, "not leading: writer stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_writer_runs_only_during_terms_and_restarts_on_each() {
        let (set, leading) = watch::channel(false);
        let starts = Arc::new(AtomicUsize::new(0));
        let (alive_tx, mut alive) = watch::channel(false);
        let alive_tx = Arc::new(alive_tx);
        let counted = starts.clone();
        tokio::spawn(while_leading(leading, "test", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let alive_tx = alive_tx.clone();
            async move {
                // Marks itself alive until dropped.
                struct Alive(Arc<watch::Sender<bool>>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.send_replace(false);
                    }
                }
                alive_tx.send_replace(true);
                let _alive = Alive(alive_tx);
                std::future::pending::<()>().await;
            }
        }));
        set.send_replace(true);
        alive.wait_for(|a| *a).await.unwrap();
        set.send_replace(false);
        alive.wait_for(|a| !*a).await.unwrap();
        set.send_replace(true);
        alive.wait_for(|a| *a).await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }
}

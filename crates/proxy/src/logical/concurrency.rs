//! A backend's concurrency limit: at most `max_in_flight` requests, at most
//! `max_queue` more waiting for a slot, each for at most `queue_timeout`;
//! anything beyond is shed at once (503, `plexus-error: overloaded`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::ShedReason;

#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    max_queue: usize,
    queued: AtomicUsize,
    queue_timeout: Duration,
}

impl ConcurrencyLimit {
    /// `None` when the backend is unlimited (`max_in_flight` 0 or absent).
    pub fn from_proto(proto: Option<&plexus_api::v1::Concurrency>) -> Option<ConcurrencyLimit> {
        let proto = proto.filter(|c| c.max_in_flight > 0)?;
        Some(ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(proto.max_in_flight as usize)),
            max_queue: proto.max_queue as usize,
            queued: AtomicUsize::new(0),
            queue_timeout: Duration::from_millis(proto.queue_timeout_ms.unwrap_or(1_000)),
        })
    }

    /// A slot, held until the response is finished (the permit rides in the body).
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, ShedReason> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ShedReason::queue_full);
        }
        let _queued = QueueSlot(&self.queued);
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a full queue anyway.
            Ok(Err(_closed)) => Err(ShedReason::queue_full),
            Err(_elapsed) => Err(ShedReason::queue_timeout),
        }
    }
}

/// Leaves the queue however the wait ends (slot, timeout, or caller gone).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_in_flight: u32, max_queue: u32) -> ConcurrencyLimit {
        ConcurrencyLimit::from_proto(Some(&plexus_api::v1::Concurrency {
            max_in_flight,
            max_queue,
            queue_timeout_ms: Some(100),
        }))
        .expect("limited")
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(ConcurrencyLimit::from_proto(None).is_none());
        let zero = plexus_api::v1::Concurrency::default();
        assert!(ConcurrencyLimit::from_proto(Some(&zero)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn full_without_queue_sheds_at_once() {
        let l = limit(1, 0);
        let held = l.acquire().await.expect("first slot");
        assert_eq!(l.acquire().await.err(), Some(ShedReason::queue_full));
        drop(held);
        assert!(l.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_wait_for_a_slot_or_time_out() {
        let l = Arc::new(limit(1, 1));
        let held = l.acquire().await.expect("first slot");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.map(drop) }
        });
        tokio::task::yield_now().await;
        // The queue (1) is taken by the waiter: the next one is shed at once.
        assert_eq!(l.acquire().await.err(), Some(ShedReason::queue_full));
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));

        let held = l.acquire().await.expect("slot again");
        let started = tokio::time::Instant::now();
        assert_eq!(l.acquire().await.err(), Some(ShedReason::queue_timeout));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        drop(held);
        assert_eq!(l.queued.load(Ordering::Acquire), 0);
    }
}

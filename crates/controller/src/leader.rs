//! Which replica writes. Every controller replica serves the read-only APIs
//! (Destination, Identity, the webhook); only the holder of a
//! coordination.k8s.io/v1 Lease writes to the API server (route status, the
//! webhook's `caBundle`, the CA Secret), so two replicas never fight over an
//! object. The election itself is `kube-lease-manager`'s (server-side apply
//! conflicts make two holders at once impossible).

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Whether this replica leads, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

/// The Lease this replica competes for.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    /// The holder identity written to the Lease: the pod's name.
    pub holder: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
}

impl Leadership {
    /// Outside a cluster there is one controller and nothing to share: it leads.
    pub fn sole() -> Self {
        let (sender, receiver) = watch::channel(true);
        // The receiver keeps its value after the sender is gone.
        drop(sender);
        Self(receiver)
    }

    /// Joins the election for `election.lease`; the Lease is created if absent.
    /// The returned handle follows the election until the process ends.
    pub async fn elect(
        client: kube::Client,
        election: &Election,
    ) -> Result<Self, LeaseManagerError> {
        let seconds = election.duration.as_secs().max(2);
        // Renew a third of the way before expiry: one slow renewal does not
        // lose the Lease, and a dead holder is replaced within `duration`.
        let manager = LeaseManagerBuilder::new(client, &election.lease)
            .with_namespace(&election.namespace)
            .with_identity(&election.holder)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .build()
            .await?;
        let (receiver, task) = manager.watch().await;
        let (holder, lease) = (election.holder.clone(), election.lease.clone());
        let mut changes = receiver.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let leading = *changes.borrow_and_update();
                tracing::info!(%holder, %lease, leading, "leadership changed");
            }
            // The manager ends only when every receiver is gone or on a fatal error.
            if let Ok(Err(error)) = task.await {
                tracing::error!(%lease, %error, "leader election stopped");
            }
        });
        Ok(Self(receiver))
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// The underlying channel, for writers in other crates.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

/// The holder identity: `POD_NAME` (the chart's downward API), else the host name.
pub fn holder_identity(pod_name: Option<String>) -> String {
    pod_name
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "plexus-controller".to_string())
}

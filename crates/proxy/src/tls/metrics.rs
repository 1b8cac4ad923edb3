//! mTLS metrics: handshakes by direction, failures by reason (what a user
//! needs to tell an unknown CA from an identity mismatch from an expired
//! certificate), and the expiry of the proxy's own certificate.

use std::time::SystemTime;

use plexus_identity::HandshakeFailure;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::MeshTls;
use crate::metrics::DirectionLabel;
use plexus_core::Direction;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    direction: DirectionLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    direction: DirectionLabel,
    reason: &'static str,
}

#[derive(Clone, Default)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    expiry: Gauge,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "plexus_proxy_tls_handshakes",
            "Mesh TLS handshakes completed, by direction (outbound: this proxy was the client)",
            metrics.handshakes.clone(),
        );
        registry.register(
            "plexus_proxy_tls_handshake_failures",
            "Mesh TLS handshakes failed, by direction and reason \
             (unknown_ca, identity_mismatch, expired, no_identity, no_certificate, other)",
            metrics.failures.clone(),
        );
        registry.register(
            "plexus_proxy_identity_certificate_expiry_seconds",
            "Expiry of the proxy's current certificate, seconds since the Unix epoch (0: none)",
            metrics.expiry.clone(),
        );
        metrics
    }

    pub fn handshake(&self, direction: Direction) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                direction: DirectionLabel(direction),
            })
            .inc();
    }

    pub fn failure(&self, direction: Direction, reason: HandshakeFailure) {
        self.failures
            .get_or_create(&FailureLabels {
                direction: DirectionLabel(direction),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Keeps the expiry gauge on the current certificate, for as long as `mesh` renews.
    pub fn follow_expiry(&self, mesh: &MeshTls) {
        let gauge = self.expiry.clone();
        let mut current = mesh.watch();
        tokio::spawn(async move {
            loop {
                let expiry = current
                    .borrow_and_update()
                    .as_ref()
                    .and_then(|c| c.not_after.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                gauge.set(expiry);
                if current.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

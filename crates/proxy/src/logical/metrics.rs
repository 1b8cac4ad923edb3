//! Counters of what the logical side decided: retries, budget exhaustion,
//! ejections, shed requests. Labelled by target and backend (a Service can be
//! a backend of several targets, each with its own endpoint state); recorded
//! per event, never per request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Handles to the logical side's metrics; cheap to clone (every field is an `Arc`).
#[derive(Clone, Debug, Default)]
pub struct LogicalMetrics {
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<BackendLabels, Counter>,
    ejections: Family<BackendLabels, Counter>,
    endpoints_ejected: Family<BackendLabels, Gauge>,
    shed: Family<ShedLabels, Counter>,
    /// Each target's backends with series, so they can go with the target.
    backends: Arc<Mutex<HashMap<String, HashSet<String>>>>,
}

/// The labels of one backend of one target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BackendLabels {
    target: String,
    backend: String,
}

impl BackendLabels {
    pub fn new(target: &str, backend: &str) -> BackendLabels {
        BackendLabels {
            target: target.to_owned(),
            backend: backend.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    reason: RetryReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    reason: ShedReason,
}

/// Why an attempt was retried.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are the snake_case spelling
pub enum RetryReason {
    status,
    grpc_status,
    connect,
    request_error,
    timeout,
}

impl RetryReason {
    const ALL: [RetryReason; 5] = [
        RetryReason::status,
        RetryReason::grpc_status,
        RetryReason::connect,
        RetryReason::request_error,
        RetryReason::timeout,
    ];
}

/// Why a request was shed by the concurrency limit.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ShedReason {
    queue_full,
    queue_timeout,
}

impl LogicalMetrics {
    /// Registers the metrics (names start with `plexus_proxy_`) and returns their handles.
    pub fn register(registry: &mut Registry) -> LogicalMetrics {
        let metrics = LogicalMetrics::default();
        registry.register(
            "plexus_proxy_retries",
            "Attempts retried, by backend and reason",
            metrics.retries.clone(),
        );
        registry.register(
            "plexus_proxy_retry_budget_exhausted",
            "Retries refused because the backend's retry budget was exhausted",
            metrics.budget_exhausted.clone(),
        );
        registry.register(
            "plexus_proxy_endpoint_ejections",
            "Endpoints ejected by failure accrual (re-ejections after a failed probe included)",
            metrics.ejections.clone(),
        );
        registry.register(
            "plexus_proxy_endpoints_ejected",
            "Endpoints currently ejected by failure accrual",
            metrics.endpoints_ejected.clone(),
        );
        registry.register(
            "plexus_proxy_shed_requests",
            "Requests shed by a backend's concurrency limit",
            metrics.shed.clone(),
        );
        metrics
    }

    pub(crate) fn retried(&self, backend: &BackendLabels, reason: RetryReason) {
        let labels = RetryLabels {
            backend: backend.clone(),
            reason,
        };
        self.retries.get_or_create(&labels).inc();
    }

    pub(crate) fn budget_exhausted(&self, backend: &BackendLabels) {
        self.budget_exhausted.get_or_create(backend).inc();
    }

    pub(crate) fn shed(&self, backend: &BackendLabels, reason: ShedReason) {
        let labels = ShedLabels {
            backend: backend.clone(),
            reason,
        };
        self.shed.get_or_create(&labels).inc();
    }

    /// The ejection counter and the ejected gauge of one backend, resolved
    /// once, when the backend is built: every backend that can have series
    /// passes here first.
    pub(crate) fn ejection_metrics(&self, backend: &BackendLabels) -> EjectionMetrics {
        self.backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(backend.target.clone())
            .or_default()
            .insert(backend.backend.clone());
        EjectionMetrics {
            ejections: self.ejections.get_or_create(backend).clone(),
            ejected: self.endpoints_ejected.get_or_create(backend).clone(),
        }
    }

    /// Removes every series of `target`'s backends (the target idled out).
    pub fn forget_target(&self, target: &str) {
        let backends = self
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
        for backend in backends.into_iter().flatten() {
            let backend = BackendLabels {
                target: target.to_owned(),
                backend,
            };
            self.budget_exhausted.remove(&backend);
            self.ejections.remove(&backend);
            self.endpoints_ejected.remove(&backend);
            for reason in RetryReason::ALL {
                self.retries.remove(&RetryLabels {
                    backend: backend.clone(),
                    reason,
                });
            }
            for reason in [ShedReason::queue_full, ShedReason::queue_timeout] {
                self.shed.remove(&ShedLabels {
                    backend: backend.clone(),
                    reason,
                });
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn retries_total(&self, backend: &BackendLabels, reason: RetryReason) -> u64 {
        let labels = RetryLabels {
            backend: backend.clone(),
            reason,
        };
        self.retries.get_or_create(&labels).get()
    }
}

/// Ejection metrics of one backend.
#[derive(Clone, Debug, Default)]
pub(crate) struct EjectionMetrics {
    pub ejections: Counter,
    pub ejected: Gauge,
}

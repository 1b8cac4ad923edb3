//! Counters of what the logical side decided: retries, budget exhaustion,
//! ejections, shed requests, injected faults; and the gRPC statuses a backend's endpoints
//! answered. Labelled by target and backend (a Service can be a backend of
//! several targets, each with its own endpoint state); recorded per event or
//! per gRPC response (through series resolved once per backend), never per
//! plain HTTP request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::grpc_status::GrpcStatus;

/// Handles to the logical side's metrics; cheap to clone (every field is an `Arc`).
#[derive(Clone, Debug, Default)]
pub struct LogicalMetrics {
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<BackendLabels, Counter>,
    ejections: Family<BackendLabels, Counter>,
    endpoints_ejected: Family<BackendLabels, Gauge>,
    shed: Family<ShedLabels, Counter>,
    grpc_responses: Family<GrpcLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// 18 values at most: the 17 codes and `invalid`.
    grpc_status: GrpcStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    fault: FaultKind,
}

/// Which fault a rule injected ([`super::fault`]).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FaultKind {
    delay,
    abort,
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
        registry.register(
            "plexus_proxy_grpc_responses",
            "gRPC responses of a backend's endpoints (every attempt), by grpc-status \
             (`invalid`: absent or not a gRPC code)",
            metrics.grpc_responses.clone(),
        );
        registry.register(
            "plexus_proxy_faults_injected",
            "Requests a rule's fault injection delayed or aborted, by the backend they were routed to",
            metrics.faults.clone(),
        );
        metrics
    }

    pub(crate) fn fault_injected(&self, backend: &BackendLabels, fault: FaultKind) {
        let labels = FaultLabels {
            backend: backend.clone(),
            fault,
        };
        self.faults.get_or_create(&labels).inc();
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
    pub(crate) fn backend_series(&self, backend: &BackendLabels) -> BackendSeries {
        self.backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(backend.target.clone())
            .or_default()
            .insert(backend.backend.clone());
        BackendSeries {
            ejections: self.ejections.get_or_create(backend).clone(),
            ejected: self.endpoints_ejected.get_or_create(backend).clone(),
            grpc: Arc::new(GrpcSeries {
                family: self.grpc_responses.clone(),
                backend: backend.clone(),
                counters: Default::default(),
            }),
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
            for grpc_status in GrpcStatus::all() {
                self.grpc_responses.remove(&GrpcLabels {
                    backend: backend.clone(),
                    grpc_status,
                });
            }
            for fault in [FaultKind::delay, FaultKind::abort] {
                self.faults.remove(&FaultLabels {
                    backend: backend.clone(),
                    fault,
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

    #[cfg(test)]
    pub(crate) fn grpc_responses_total(&self, backend: &BackendLabels, status: GrpcStatus) -> u64 {
        let labels = GrpcLabels {
            backend: backend.clone(),
            grpc_status: status,
        };
        self.grpc_responses.get_or_create(&labels).get()
    }
}

/// The series of one backend: ejections, and the gRPC statuses it answered.
#[derive(Clone, Debug)]
pub(crate) struct BackendSeries {
    pub ejections: Counter,
    pub ejected: Gauge,
    pub grpc: Arc<GrpcSeries>,
}

/// One backend's gRPC status counters, each found in the family on its first
/// use and kept: a response costs one atomic increment, no lock.
#[derive(Debug)]
pub(crate) struct GrpcSeries {
    family: Family<GrpcLabels, Counter>,
    backend: BackendLabels,
    counters: [OnceLock<Counter>; GrpcStatus::COUNT],
}

impl GrpcSeries {
    pub fn count(&self, grpc_status: GrpcStatus) {
        self.counters[grpc_status.index()]
            .get_or_init(|| {
                let labels = GrpcLabels {
                    backend: self.backend.clone(),
                    grpc_status,
                };
                self.family.get_or_create(&labels).clone()
            })
            .inc();
    }
}

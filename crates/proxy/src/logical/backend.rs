//! One backend of a target: its endpoints and balancer, its retry budget,
//! failure accrual policy and concurrency limit.

use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_api::v1 as proto;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use super::accrual::{AccrualPolicy, Transition};
use super::balance::{Balancer, Picked, Strategy};
use super::concurrency::ConcurrencyLimit;
use super::grpc_status::GrpcStatus;
use super::metrics::{BackendLabels, BackendSeries, FaultKind, LogicalMetrics, RetryReason};
use super::mirror::MAX_COPIES_IN_FLIGHT;
use super::outlier::{self, Schedule, SuccessRatePolicy};
use crate::connect::{AppProtocol, EndpointClient};
use crate::error::ProxyError;

#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    balancer: Balancer,
    budget: TpsBudget,
    accrual: AccrualPolicy,
    /// Success-rate outlier detection, when on, and its next evaluation.
    success_rate: Option<(SuccessRatePolicy, Schedule)>,
    limit: Option<ConcurrencyLimit>,
    /// What this backend was built from, to tell whether an update changes it.
    resilience: Option<proto::Resilience>,
    /// Serialises ejection decisions, so two endpoints cannot both take the
    /// last "half" slot.
    ejecting: Mutex<()>,
    labels: BackendLabels,
    series: BackendSeries,
    metrics: LogicalMetrics,
    /// Mirror copies sent to this backend at once; kept across rebuilds, so
    /// updates cannot raise the bound.
    pub mirror_slots: Arc<Semaphore>,
}

impl Backend {
    /// A backend built from `proto`; endpoints already known to `previous`
    /// keep their latency and accrual state.
    /// Counts a fault a rule injected into a request routed here.
    pub fn fault_injected(&self, fault: FaultKind) {
        self.metrics.fault_injected(&self.labels, fault);
    }

    pub fn new(
        target: &str,
        name: &str,
        proto: &proto::Backend,
        previous: Option<&Backend>,
        protocol: AppProtocol,
        client: &Arc<dyn EndpointClient>,
        metrics: &LogicalMetrics,
    ) -> Backend {
        let resilience = proto.resilience.as_ref();
        let accrual = resilience.and_then(|r| r.failure_accrual.as_ref());
        let labels = BackendLabels::new(target, name);
        let backend = Backend {
            name: Arc::from(name),
            balancer: Balancer::new(
                Strategy::from_resilience(resilience),
                previous.map(|p| &p.balancer),
            ),
            budget: retry_budget(resilience.and_then(|r| r.retry_budget.as_ref())),
            accrual: AccrualPolicy::from_proto(accrual),
            success_rate: SuccessRatePolicy::from_proto(
                accrual.and_then(|a| a.success_rate.as_ref()),
            )
            .map(|policy| (policy, Schedule::new(Instant::now(), policy.interval))),
            limit: ConcurrencyLimit::from_proto(resilience.and_then(|r| r.concurrency.as_ref())),
            resilience: proto.resilience.clone(),
            ejecting: Mutex::new(()),
            series: metrics.backend_series(&labels),
            labels,
            metrics: metrics.clone(),
            mirror_slots: previous.map_or_else(
                || Arc::new(Semaphore::new(MAX_COPIES_IN_FLIGHT)),
                |p| p.mirror_slots.clone(),
            ),
        };
        backend.update_endpoints(proto, protocol, client);
        backend
    }

    /// Whether `proto` can be applied by `update_endpoints` alone.
    pub fn same_resilience(&self, proto: &proto::Backend) -> bool {
        self.resilience == proto.resilience
    }

    /// `protocol`: what the target's hint says its applications speak.
    pub fn update_endpoints(
        &self,
        proto: &proto::Backend,
        protocol: AppProtocol,
        client: &Arc<dyn EndpointClient>,
    ) {
        self.balancer
            .update(&self.name, &proto.endpoints, protocol, client);
        self.count_ejected();
    }

    /// The backend left the target: it has no ejected endpoints any more.
    pub fn retire(&self) {
        self.series.ejected.set(0);
    }

    /// The ejected gauge is recounted (not incremented) so that endpoints
    /// removed while ejected, or ejected after removal, leave no trace.
    fn count_ejected(&self) {
        let set = self.balancer.current();
        let ejected = set.ready.iter().filter(|e| !e.accrual.admits()).count();
        self.series
            .ejected
            .set(i64::try_from(ejected).unwrap_or(i64::MAX));
    }

    /// A concurrency slot (or `None` when unlimited); shed with `overloaded`.
    pub async fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(limit) = &self.limit else {
            return Ok(None);
        };
        match limit.acquire().await {
            Ok(permit) => Ok(Some(permit)),
            Err(reason) => {
                self.metrics.shed(&self.labels, reason);
                Err(ProxyError::Overloaded(self.name.to_string()))
            }
        }
    }

    /// What `request` from `source` hashes to, when this backend hashes.
    pub fn hash<B>(
        &self,
        request: &http::Request<B>,
        source: Option<&IpAddr>,
    ) -> Option<NonZeroU64> {
        self.balancer.strategy().hash(request, source)
    }

    /// `hash`: the request's, from [`Backend::hash`].
    pub fn pick(&self, hash: Option<NonZeroU64>) -> Result<Picked, ProxyError> {
        self.balancer
            .pick(Instant::now(), hash)
            .ok_or_else(|| ProxyError::NoEndpoints(self.name.to_string()))
    }

    /// Records an attempt's outcome for failure accrual.
    pub fn record(&self, picked: &Picked, success: bool) {
        let now = Instant::now();
        let accrual = &picked.endpoint.accrual;
        match accrual.record(&self.accrual, picked.probe, success, now, || {
            self.may_eject()
        }) {
            Transition::None => {}
            Transition::Ejected => {
                tracing::info!(backend = %self.name, endpoint = %picked.endpoint.target.addr,
                    "endpoint ejected after consecutive failures");
                self.series.ejections.inc();
                self.count_ejected();
            }
            Transition::Reejected => {
                self.series.ejections.inc();
            }
            Transition::Readmitted => {
                tracing::info!(backend = %self.name, endpoint = %picked.endpoint.target.addr,
                    "endpoint readmitted after a successful probe");
                self.count_ejected();
            }
        }
        if let Some((policy, schedule)) = &self.success_rate {
            accrual.window.count(success);
            if schedule.claim(now, policy.interval) {
                self.eject_outliers(policy, now);
            }
        }
    }

    /// Whether one more endpoint may be ejected: never more than half.
    /// Asked with the endpoint's accrual state locked, and serialised, so two
    /// endpoints cannot both take the last slot.
    fn may_eject(&self) -> bool {
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let set = self.balancer.current();
        let ejected = set.ready.iter().filter(|e| !e.accrual.admits()).count();
        ejected < set.ready.len() / 2
    }

    /// The success-rate evaluation of the interval that just ended: every
    /// endpoint's window starts again; admitting outliers are ejected, worst first.
    fn eject_outliers(&self, policy: &SuccessRatePolicy, now: Instant) {
        let set = self.balancer.current();
        let samples: Vec<outlier::Sample> = set
            .ready
            .iter()
            .enumerate()
            .filter_map(|(at, endpoint)| {
                let (successes, total) = endpoint.accrual.window.take();
                endpoint.accrual.admits().then_some((at, successes, total))
            })
            .collect();
        let mut ejected = false;
        for (at, rate) in outlier::outliers(policy, &samples) {
            let endpoint = &set.ready[at];
            if endpoint
                .accrual
                .eject_outlier(&self.accrual, now, || self.may_eject())
            {
                tracing::info!(backend = %self.name, endpoint = %endpoint.target.addr,
                    success_rate = rate, "endpoint ejected: its success rate is an outlier");
                self.series.ejections.inc();
                ejected = true;
            }
        }
        if ejected {
            self.count_ejected();
        }
    }

    /// Counts a gRPC status one of the endpoints answered.
    pub fn count_grpc(&self, status: GrpcStatus) {
        self.series.grpc.count(status);
    }

    /// Every request (not retry) adds to the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Whether one more retry is afforded; counts exhaustion.
    pub fn withdraw_retry(&self) -> bool {
        let afforded = self.budget.withdraw();
        if !afforded {
            self.metrics.budget_exhausted(&self.labels);
        }
        afforded
    }

    pub fn retried(&self, reason: RetryReason) {
        self.metrics.retried(&self.labels, reason);
    }
}

/// tower's `TpsBudget` from the proto, defaults filled in and values clamped to
/// what `TpsBudget::new` accepts (it asserts on anything else).
fn retry_budget(proto: Option<&proto::RetryBudget>) -> TpsBudget {
    let default = proto::RetryBudget::default();
    let proto = proto.unwrap_or(&default);
    let ratio = proto.ratio.unwrap_or(0.2);
    let ratio = if ratio.is_finite() {
        ratio.clamp(0.0, 1000.0)
    } else {
        0.2
    };
    let min_per_second = proto.min_per_second.unwrap_or(10).min(i32::MAX as u32 - 1);
    let ttl = Duration::from_millis(proto.ttl_ms.unwrap_or(10_000))
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    TpsBudget::new(ttl, min_per_second, ratio as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::connect::{EndpointTarget, ResponseFuture, SendError};
    use http::Request;
    use prometheus_client::metrics::gauge::Gauge;

    struct Refused;
    impl EndpointClient for Refused {
        fn send(&self, _: &EndpointTarget, _: Request<Body>) -> ResponseFuture {
            Box::pin(async { Err(SendError::Connect("refused".into())) })
        }
    }

    fn proto_backend(ports: &[u16]) -> proto::Backend {
        proto::Backend {
            name: "b".into(),
            endpoints: ports
                .iter()
                .map(|p| proto::Endpoint {
                    address: format!("127.0.0.1:{p}"),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            resilience: Some(proto::Resilience {
                failure_accrual: Some(proto::FailureAccrual {
                    consecutive_failures: Some(1),
                    min_backoff_ms: Some(60_000),
                    ..Default::default()
                }),
                load_balancer: "round-robin".into(),
                ..Default::default()
            }),
        }
    }

    fn ejected_gauge(metrics: &LogicalMetrics) -> Gauge {
        metrics
            .backend_series(&BackendLabels::new("t", "b"))
            .ejected
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_half_of_the_endpoints_are_ejected() {
        let client: Arc<dyn EndpointClient> = Arc::new(Refused);
        let metrics = LogicalMetrics::default();
        let backend = Backend::new(
            "t",
            "b",
            &proto_backend(&[1, 2, 3, 4, 5]),
            None,
            AppProtocol::AsRequested,
            &client,
            &metrics,
        );
        for _ in 0..50 {
            let picked = backend.pick(None).expect("endpoints");
            backend.record(&picked, false);
        }
        let ejected = |b: &Backend| {
            b.balancer
                .current()
                .ready
                .iter()
                .filter(|e| !e.accrual.admits())
                .count()
        };
        assert_eq!(ejected(&backend), 2, "5 endpoints: at most 2 ejected");
        assert_eq!(ejected_gauge(&metrics).get(), 2);

        // Removing an ejected endpoint takes it out of the gauge.
        let gone = backend
            .balancer
            .current()
            .ready
            .iter()
            .find(|e| !e.accrual.admits())
            .map(|e| e.target.addr.port())
            .expect("an ejected endpoint");
        let kept: Vec<u16> = (1..=5).filter(|p| *p != gone).collect();
        backend.update_endpoints(&proto_backend(&kept), AppProtocol::AsRequested, &client);
        assert_eq!(ejected_gauge(&metrics).get(), 1);
        backend.retire();
        assert_eq!(ejected_gauge(&metrics).get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_outliers_are_ejected_worst_first_never_more_than_half() {
        let client: Arc<dyn EndpointClient> = Arc::new(Refused);
        let metrics = LogicalMetrics::default();
        let mut proto = proto_backend(&[1, 2, 3, 4, 5]);
        proto.resilience = Some(proto::Resilience {
            failure_accrual: Some(proto::FailureAccrual {
                consecutive_failures: Some(0),
                success_rate: Some(proto::SuccessRate {
                    interval_ms: Some(1_000),
                    min_requests: Some(10),
                    min_endpoints: Some(3),
                    threshold: Some(0.9),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let backend = Backend::new(
            "t",
            "b",
            &proto,
            None,
            AppProtocol::AsRequested,
            &client,
            &metrics,
        );
        let endpoints = backend.balancer.current().ready.clone();
        // Endpoints 0 and 1 always succeed; 2 fails 1 in 2, 3 and 4 fail 1 in 4 and 1 in 3.
        let failing_every = [0, 0, 2, 4, 3];
        for round in 0..12 {
            for (endpoint, every) in endpoints.iter().zip(failing_every) {
                let picked = Picked {
                    endpoint: endpoint.clone(),
                    probe: false,
                };
                backend.record(&picked, every == 0 || round % every != 0);
            }
        }
        assert!(
            endpoints.iter().all(|e| e.accrual.admits()),
            "not evaluated before the interval"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let picked = Picked {
            endpoint: endpoints[0].clone(),
            probe: false,
        };
        backend.record(&picked, true);
        let admits: Vec<bool> = endpoints.iter().map(|e| e.accrual.admits()).collect();
        // All three are below 0.9; the two worst go (50 %, then 66 %), the third stays (half rule).
        assert_eq!(admits, [true, true, false, true, false]);
        assert_eq!(ejected_gauge(&metrics).get(), 2);
    }

    fn count_retries(budget: &TpsBudget, requests: u32) -> u32 {
        (0..requests).for_each(|_| budget.deposit());
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
            assert!(retries < 1_000_000, "budget never runs out");
        }
        retries
    }

    #[tokio::test(start_paused = true)]
    async fn default_budget_is_twenty_percent_plus_ten_per_second_over_ten_seconds() {
        let budget = retry_budget(None);
        // 10/s over the 10 s window = 100, plus 20 % of 1000 requests.
        assert_eq!(count_retries(&budget, 1000), 300);
        // Nothing more until deposits or the window moves on.
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(count_retries(&budget, 0), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn configured_budgets_and_out_of_range_values_do_not_panic() {
        let budget = retry_budget(Some(&proto::RetryBudget {
            ratio: Some(0.5),
            min_per_second: Some(0),
            ttl_ms: Some(1_000),
        }));
        assert_eq!(count_retries(&budget, 100), 50);
        for (ratio, ttl_ms) in [(f64::NAN, 0), (-1.0, u64::MAX), (1e9, 10)] {
            let budget = retry_budget(Some(&proto::RetryBudget {
                ratio: Some(ratio),
                min_per_second: Some(u32::MAX),
                ttl_ms: Some(ttl_ms),
            }));
            budget.deposit();
        }
    }
}

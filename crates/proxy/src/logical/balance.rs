//! Picking an endpoint of a backend: power of two choices over tower's
//! `PeakEwma` load (default), round robin, or consistent hashing of a
//! request key over a Maglev table (`maglev`), skipping ejected endpoints.
//!
//! Why not `tower::balance::p2c::Balance`: it needs `&mut self` to pick, so
//! sharing it between connections needs a `Buffer` (a channel and a task hop
//! per request). Measured on this machine (4 endpoints, 2 workers, release):
//! Buffer+Balance p50 3–23 µs, p99 ~90 µs per pick; a direct pick over shared
//! `PeakEwma`s 0.3 µs. So each endpoint keeps tower's `PeakEwma` (RTT
//! estimate, pending count, decay) and the pick itself — two random
//! endpoints, the lower `Load` wins — happens inline on the caller's task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response};
use plexus_api::v1::Resilience;
use rand::Rng;
use tokio::time::Instant;
use tower::Service;
use tower::load::{CompleteOnResponse, Load, PeakEwma};

use super::accrual::Accrual;
use super::maglev::{self, Table};
use super::request_key::RequestKey;
use crate::body::Body;
use crate::connect::{AppProtocol, EndpointClient, EndpointTarget, ResponseFuture, SendError};

/// Latency assumed for an endpoint before it has answered (Linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast a latency peak is forgotten.
const DECAY: Duration = Duration::from_secs(10);

/// One endpoint of a backend, shared by every request sent to it. Survives
/// endpoint-set updates that keep it, so its latency and accrual state do too.
pub struct Endpoint {
    pub target: EndpointTarget,
    service: Mutex<PeakEwma<Sender>>,
    pub accrual: Accrual,
}

/// The tower `Service` that `PeakEwma` measures: one send to one endpoint.
struct Sender {
    client: Arc<dyn EndpointClient>,
    target: EndpointTarget,
}

impl Service<Request<Body>> for Sender {
    type Response = Response<Body>;
    type Error = SendError;
    type Future = ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), SendError>> {
        // Readiness is the transport's business (its pools queue); the
        // logical side limits concurrency itself, per backend.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture {
        self.client.send(&self.target, request)
    }
}

impl Endpoint {
    fn new(target: EndpointTarget, client: Arc<dyn EndpointClient>) -> Endpoint {
        let sender = Sender {
            client,
            target: target.clone(),
        };
        let decay_ns = DECAY.as_nanos() as f64;
        Endpoint {
            target,
            service: Mutex::new(PeakEwma::new(
                sender,
                DEFAULT_RTT,
                decay_ns,
                CompleteOnResponse::default(),
            )),
            accrual: Accrual::default(),
        }
    }

    /// Sends one attempt; its latency (to response headers) feeds the estimate.
    pub fn send(
        &self,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + 'static {
        self.lock().call(request)
    }

    fn load(&self) -> tower::load::peak_ewma::Cost {
        self.lock().load()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeakEwma<Sender>> {
        // PeakEwma holds no invariant a panic could break halfway.
        self.service
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("target", &self.target)
            .field("admits", &self.accrual.admits())
            .finish()
    }
}

/// The endpoint chosen for one attempt.
#[derive(Debug, Clone)]
pub struct Picked {
    pub endpoint: Arc<Endpoint>,
    /// This attempt is the single probe of an ejected endpoint.
    pub probe: bool,
}

#[derive(Debug)]
pub enum Strategy {
    PeakEwmaP2c,
    RoundRobin(AtomicUsize),
    /// A request with the key goes where its hash lands in the endpoint
    /// set's table; one without gets the P2C pick.
    ConsistentHash(RequestKey),
}

/// Keys whose endpoint is ejected look this many more times, each an
/// independent hash, before falling back to a scan. At most half of the
/// endpoints are ejected, so one in 2^16 of those keys gets that far.
const REHASHES: u64 = 16;

impl Strategy {
    /// The `Resilience.load_balancer` names, for error messages.
    pub const NAMES: &str = "p2c-ewma (the default), round-robin or consistent-hash";

    /// From `Resilience.load_balancer` and `hash_key`; P2C (the default)
    /// when they are not one of [`Strategy::NAMES`] with its key.
    pub fn from_resilience(resilience: Option<&Resilience>) -> Strategy {
        Strategy::parse(resilience).unwrap_or_else(|problem| {
            tracing::warn!(%problem, "bad load balancer, using p2c-ewma");
            Strategy::PeakEwmaP2c
        })
    }

    /// The strategy `resilience` names, or the problem, starting with the
    /// field it is in (`load_balancer: …`, `hash_key: …`).
    pub fn parse(resilience: Option<&Resilience>) -> Result<Strategy, String> {
        let (name, key) = resilience.map_or(("", ""), |r| {
            (r.load_balancer.as_str(), r.hash_key.as_str())
        });
        match name {
            "consistent-hash" => RequestKey::parse(key)
                .map(Strategy::ConsistentHash)
                .map_err(|problem| format!("hash_key: {problem}")),
            _ if !key.is_empty() => Err(format!(
                "hash_key: {key:?} needs load_balancer consistent-hash (not {name:?})"
            )),
            "round-robin" => Ok(Strategy::RoundRobin(AtomicUsize::new(0))),
            "" | "p2c-ewma" => Ok(Strategy::PeakEwmaP2c),
            _ => Err(format!(
                "load_balancer: unknown load balancer {name:?} (expected {})",
                Strategy::NAMES
            )),
        }
    }

    /// What `request` from the application at `source` hashes to, for
    /// [`Balancer::pick`]; `None` (one branch) for the other strategies.
    pub fn hash<B>(&self, request: &Request<B>, source: Option<&IpAddr>) -> Option<NonZeroU64> {
        match self {
            Strategy::ConsistentHash(key) => key.hash(request, source),
            _ => None,
        }
    }
}

/// The endpoints of one backend and how to pick among them.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    endpoints: RwLock<Arc<EndpointSet>>,
}

/// A snapshot of a backend's endpoints; in-flight requests keep their own `Arc`s.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Ready endpoints only: terminating ones get no new requests.
    pub ready: Vec<Arc<Endpoint>>,
    /// Consistent hashing: the table over `ready` and the weights it was built
    /// with (an update that changes neither keeps it).
    hashing: Option<(Arc<Table>, Vec<u32>)>,
}

impl Balancer {
    /// A balancer that starts with `previous`'s endpoints (state kept).
    pub fn new(strategy: Strategy, previous: Option<&Balancer>) -> Balancer {
        let endpoints = previous.map(Balancer::current).unwrap_or_default();
        Balancer {
            strategy,
            endpoints: RwLock::new(endpoints),
        }
    }

    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    pub fn current(&self) -> Arc<EndpointSet> {
        self.endpoints
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the endpoint set, whose applications speak `protocol`.
    /// Endpoints present before (same address, identity, meshing and
    /// protocol) keep their state; a malformed address is skipped with an
    /// error naming it.
    pub fn update(
        &self,
        backend: &str,
        endpoints: &[plexus_api::v1::Endpoint],
        protocol: AppProtocol,
        client: &Arc<dyn EndpointClient>,
    ) {
        let previous = self.current();
        let known: HashMap<EndpointTarget, Arc<Endpoint>> = previous
            .ready
            .iter()
            .map(|e| (e.target.clone(), e.clone()))
            .collect();
        let mut ready: Vec<Arc<Endpoint>> = Vec::with_capacity(endpoints.len());
        let mut weights: Vec<u32> = Vec::with_capacity(endpoints.len());
        for proto in endpoints.iter().filter(|e| e.ready) {
            let addr: SocketAddr = match proto.address.parse() {
                Ok(addr) => addr,
                Err(error) => {
                    tracing::error!(backend, address = %proto.address, %error,
                        "endpoint address is not ip:port, endpoint skipped");
                    continue;
                }
            };
            let target = EndpointTarget {
                addr,
                identity: (!proto.identity.is_empty()).then(|| proto.identity.clone()),
                meshed: proto.meshed,
                protocol,
                source: None,
            };
            if ready.iter().any(|e| e.target == target) {
                continue;
            }
            let endpoint = known
                .get(&target)
                .cloned()
                .unwrap_or_else(|| Arc::new(Endpoint::new(target, client.clone())));
            ready.push(endpoint);
            weights.push(proto.weight);
        }
        let hashing = match self.strategy {
            Strategy::ConsistentHash(_) => hash_table(&previous, &ready, weights),
            _ => None,
        };
        *self
            .endpoints
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Arc::new(EndpointSet { ready, hashing });
    }

    /// The endpoint for the next attempt, `None` when the backend has no ready
    /// endpoint. An ejected endpoint whose backoff has ended is offered its one
    /// probe when the pick lands on it. When every endpoint is ejected the pick
    /// fails open to an ejected one rather than failing the request.
    ///
    /// `hash`: the request's key ([`Strategy::hash`]), which consistent
    /// hashing maps to its endpoint while that one admits requests.
    pub fn pick(&self, now: Instant, hash: Option<NonZeroU64>) -> Option<Picked> {
        let set = self.current();
        let ready = &set.ready;
        match (ready.len(), &self.strategy) {
            (0, _) => None,
            (1, _) => Some(scan(ready, 0, now)),
            (n, Strategy::RoundRobin(next)) => {
                Some(scan(ready, next.fetch_add(1, Ordering::Relaxed) % n, now))
            }
            (_, Strategy::ConsistentHash(_)) => Some(match (hash, &set.hashing) {
                (Some(hash), Some((table, _))) => hashed(ready, table, hash.get(), now),
                _ => p2c(ready, now),
            }),
            (_, Strategy::PeakEwmaP2c) => Some(p2c(ready, now)),
        }
    }
}

/// The table for `ready`: `previous`'s when its endpoints and weights are
/// the same (a route change rebuilds nothing), else a new one; `None`
/// without endpoints.
fn hash_table(
    previous: &EndpointSet,
    ready: &[Arc<Endpoint>],
    weights: Vec<u32>,
) -> Option<(Arc<Table>, Vec<u32>)> {
    if let Some((table, was)) = &previous.hashing
        && *was == weights
        && previous.ready.len() == ready.len()
        && previous
            .ready
            .iter()
            .zip(ready)
            .all(|(a, b)| Arc::ptr_eq(a, b))
    {
        return Some((table.clone(), weights));
    }
    let names: Vec<String> = ready.iter().map(|e| e.target.addr.to_string()).collect();
    let table = Table::build(
        names
            .iter()
            .map(String::as_str)
            .zip(weights.iter().copied()),
    )?;
    Some((Arc::new(table), weights))
}

/// Two random endpoints, the one with the lower load wins; an ejected one
/// whose backoff has ended gets its probe.
fn p2c(ready: &[Arc<Endpoint>], now: Instant) -> Picked {
    let n = ready.len();
    let mut rng = rand::rng();
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let (ea, eb) = (&ready[a], &ready[b]);
    for candidate in [ea, eb] {
        if !candidate.accrual.admits() && candidate.accrual.try_probe(now) {
            return picked(candidate, true);
        }
    }
    match (ea.accrual.admits(), eb.accrual.admits()) {
        (true, true) if eb.load() < ea.load() => picked(eb, false),
        (true, _) => picked(ea, false),
        (false, true) => picked(eb, false),
        (false, false) => scan(ready, a, now),
    }
}

/// The endpoint `hash` lands on; when that one is ejected (and not due a
/// probe), where an independent rehash lands, and so on: an ejected
/// endpoint's keys spread over the others by their shares, and come back
/// when it is readmitted.
fn hashed(ready: &[Arc<Endpoint>], table: &Table, hash: u64, now: Instant) -> Picked {
    for n in 0..=REHASHES {
        let slot = if n == 0 {
            hash
        } else {
            maglev::rehash(hash, n)
        };
        let endpoint = &ready[table.get(slot) % ready.len()];
        if endpoint.accrual.admits() {
            return picked(endpoint, false);
        }
        if endpoint.accrual.try_probe(now) {
            return picked(endpoint, true);
        }
    }
    scan(ready, table.get(hash), now)
}

/// The first endpoint from `start` on that admits requests or can be probed.
fn scan(ready: &[Arc<Endpoint>], start: usize, now: Instant) -> Picked {
    let n = ready.len();
    for i in 0..n {
        let endpoint = &ready[(start + i) % n];
        if endpoint.accrual.admits() {
            return picked(endpoint, false);
        }
        if endpoint.accrual.try_probe(now) {
            return picked(endpoint, true);
        }
    }
    picked(&ready[start % n], false)
}

fn picked(endpoint: &Arc<Endpoint>, probe: bool) -> Picked {
    Picked {
        endpoint: endpoint.clone(),
        probe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::accrual::AccrualPolicy;

    struct NeverCalled;
    impl EndpointClient for NeverCalled {
        fn send(&self, _: &EndpointTarget, _: Request<Body>) -> ResponseFuture {
            Box::pin(async { Err(SendError::Connect("test client".into())) })
        }
    }

    fn endpoint(port: u16, ready: bool) -> plexus_api::v1::Endpoint {
        plexus_api::v1::Endpoint {
            address: format!("127.0.0.1:{port}"),
            ready,
            ..Default::default()
        }
    }

    fn client() -> Arc<dyn EndpointClient> {
        Arc::new(NeverCalled)
    }

    fn strategy(load_balancer: &str) -> Strategy {
        Strategy::from_resilience(Some(&Resilience {
            load_balancer: load_balancer.into(),
            ..Default::default()
        }))
    }

    fn port(p: &Picked) -> u16 {
        p.endpoint.target.addr.port()
    }

    #[tokio::test]
    async fn round_robin_visits_ready_endpoints_in_turn() {
        let b = Balancer::new(strategy("round-robin"), None);
        b.update(
            "b",
            &[endpoint(1, true), endpoint(2, false), endpoint(3, true)],
            AppProtocol::AsRequested,
            &client(),
        );
        let ports: Vec<u16> = (0..4)
            .map(|_| port(&b.pick(Instant::now(), None).unwrap()))
            .collect();
        assert_eq!(ports, vec![1, 3, 1, 3]);
    }

    #[tokio::test]
    async fn no_ready_endpoint_means_no_pick_and_bad_addresses_are_skipped() {
        let b = Balancer::new(Strategy::PeakEwmaP2c, None);
        let mut bad = endpoint(1, true);
        bad.address = "not-an-address".into();
        b.update(
            "b",
            &[bad, endpoint(2, false)],
            AppProtocol::AsRequested,
            &client(),
        );
        assert!(b.pick(Instant::now(), None).is_none());
    }

    #[tokio::test]
    async fn updates_keep_the_state_of_unchanged_endpoints() {
        let b = Balancer::new(Strategy::PeakEwmaP2c, None);
        b.update(
            "b",
            &[endpoint(1, true), endpoint(2, true)],
            AppProtocol::AsRequested,
            &client(),
        );
        let before = b.current().ready[0].clone();
        b.update(
            "b",
            &[endpoint(3, true), endpoint(1, true)],
            AppProtocol::AsRequested,
            &client(),
        );
        let after = b.current();
        assert_eq!(after.ready.len(), 2);
        assert!(after.ready.iter().any(|e| Arc::ptr_eq(e, &before)));
        // A new balancer (changed resilience) carries the endpoints over too.
        let next = Balancer::new(strategy("round-robin"), Some(&b));
        assert!(next.current().ready.iter().any(|e| Arc::ptr_eq(e, &before)));
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_get_nothing_until_their_single_probe() {
        let policy = AccrualPolicy {
            consecutive_failures: 1,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        };
        for name in ["p2c-ewma", "round-robin"] {
            let b = Balancer::new(strategy(name), None);
            b.update(
                "b",
                &[endpoint(1, true), endpoint(2, true), endpoint(3, true)],
                AppProtocol::AsRequested,
                &client(),
            );
            let ejected = b.current().ready[0].clone();
            ejected
                .accrual
                .record(&policy, false, false, Instant::now(), || true);
            for _ in 0..200 {
                assert_ne!(port(&b.pick(Instant::now(), None).unwrap()), 1, "{name}");
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            let picks: Vec<Picked> = (0..200)
                .map(|_| b.pick(Instant::now(), None).unwrap())
                .collect();
            let probes: Vec<&Picked> = picks.iter().filter(|p| port(p) == 1).collect();
            assert_eq!(probes.len(), 1, "{name}: exactly one probe");
            assert!(probes[0].probe);
        }
    }

    fn hashing(ports: &[u16]) -> Balancer {
        let b = Balancer::new(
            Strategy::parse(Some(&Resilience {
                load_balancer: "consistent-hash".into(),
                hash_key: "header:x-user".into(),
                ..Default::default()
            }))
            .expect("a valid strategy"),
            None,
        );
        let endpoints: Vec<_> = ports.iter().map(|p| endpoint(*p, true)).collect();
        b.update("b", &endpoints, AppProtocol::AsRequested, &client());
        b
    }

    fn key(text: &str) -> Option<NonZeroU64> {
        NonZeroU64::new(maglev::hash(text.as_bytes()))
    }

    /// The port each of 1000 keys is picked on.
    fn owners(b: &Balancer) -> Vec<u16> {
        (0..1000)
            .map(|k| port(&b.pick(Instant::now(), key(&format!("user-{k}"))).unwrap()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoints_keys_spread_over_the_others_and_come_back() {
        let policy = AccrualPolicy {
            consecutive_failures: 1,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        };
        let b = hashing(&[1, 2, 3, 4]);
        let before = owners(&b);
        assert_eq!(owners(&b), before, "a key stays on its endpoint");
        let ejected = b.current().ready[0].clone();
        ejected
            .accrual
            .record(&policy, false, false, Instant::now(), || true);
        let during = owners(&b);
        let mut moved_to = [0usize; 5];
        for (was, is) in before.iter().zip(&during) {
            if *was == 1 {
                moved_to[usize::from(*is)] += 1;
            } else {
                assert_eq!(was, is, "other keys stay");
            }
        }
        let moved: usize = moved_to.iter().sum();
        assert_eq!(moved_to[1], 0, "nothing goes to the ejected endpoint");
        for share in &moved_to[2..] {
            // About a third each, not all to one neighbour.
            assert!(share * 100 >= moved * 20, "{moved_to:?}");
        }
        // Its backoff ends: the first of its keys probes it; readmitted, it has them all back.
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = before
            .iter()
            .position(|p| *p == 1)
            .expect("a key of endpoint 1");
        let probe = b
            .pick(Instant::now(), key(&format!("user-{first}")))
            .unwrap();
        assert!(port(&probe) == 1 && probe.probe, "{probe:?}");
        ejected
            .accrual
            .record(&policy, true, true, Instant::now(), || true);
        assert_eq!(owners(&b), before);
    }

    #[tokio::test]
    async fn hashing_keeps_its_table_while_the_endpoints_stay_and_falls_back_without_a_key() {
        let b = hashing(&[1, 2, 3]);
        let table = |b: &Balancer| b.current().hashing.as_ref().map(|(t, _)| t.clone());
        let first = table(&b).expect("a table");
        b.update(
            "b",
            &[endpoint(1, true), endpoint(2, true), endpoint(3, true)],
            AppProtocol::AsRequested,
            &client(),
        );
        assert!(Arc::ptr_eq(&first, &table(&b).unwrap()), "not rebuilt");
        let mut heavier = endpoint(3, true);
        heavier.weight = 5;
        b.update(
            "b",
            &[endpoint(1, true), endpoint(2, true), heavier],
            AppProtocol::AsRequested,
            &client(),
        );
        assert!(
            !Arc::ptr_eq(&first, &table(&b).unwrap()),
            "a new weight, a new table"
        );
        let keyless: std::collections::HashSet<u16> = (0..200)
            .map(|_| port(&b.pick(Instant::now(), None).unwrap()))
            .collect();
        assert!(keyless.len() > 1, "no key: the p2c pick, {keyless:?}");
    }

    #[test]
    fn strategies_name_their_problems() {
        let parse = |load_balancer: &str, hash_key: &str| {
            Strategy::parse(Some(&Resilience {
                load_balancer: load_balancer.into(),
                hash_key: hash_key.into(),
                ..Default::default()
            }))
            .map(|_| ())
        };
        assert_eq!(parse("consistent-hash", "cookie:session"), Ok(()));
        assert_eq!(parse("", ""), Ok(()));
        for (load_balancer, hash_key, problem) in [
            (
                "random",
                "",
                "load_balancer: unknown load balancer \"random\"",
            ),
            ("consistent-hash", "", "hash_key: \"\" is not header:<name>"),
            (
                "consistent-hash",
                "identity",
                "hash_key: \"identity\" is not a key",
            ),
            (
                "round-robin",
                "source-ip",
                "hash_key: \"source-ip\" needs load_balancer",
            ),
        ] {
            let error = parse(load_balancer, hash_key).unwrap_err();
            assert!(error.starts_with(problem), "{error}");
        }
    }

    #[tokio::test]
    async fn p2c_prefers_the_endpoint_with_less_pending_work() {
        let b = Balancer::new(Strategy::PeakEwmaP2c, None);
        b.update(
            "b",
            &[endpoint(1, true), endpoint(2, true)],
            AppProtocol::AsRequested,
            &client(),
        );
        // Requests in flight on endpoint 1 (their futures are not yet polled).
        let busy = b.current().ready[0].clone();
        let pending: Vec<_> = (0..5)
            .map(|_| busy.send(Request::new(crate::body::empty())))
            .collect();
        for _ in 0..50 {
            assert_eq!(port(&b.pick(Instant::now(), None).unwrap()), 2);
        }
        drop(pending);
    }
}

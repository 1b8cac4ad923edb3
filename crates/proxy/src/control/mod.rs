//! The proxy's client of the controller's Destination API: a
//! [`DestinationSource`] that opens one watch per target in use.
//!
//! Each target gets a background task that keeps a `Watch` stream open,
//! applies snapshots and deltas to the target's `watch` channel, reconnects
//! with backoff when the stream breaks, and meanwhile keeps serving the last
//! known state: a controller restart never empties a proxy's view. Targets
//! nobody holds or resolved for `PLEXUS_DESTINATION_IDLE_TIMEOUT_MS` are
//! dropped with their stream, and at most [`MAX_WATCHED_TARGETS`] are
//! watched at once: the keys are what applications send (addresses, `Host`s).

mod server_policy;
mod update;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_api::v1::destination_client::DestinationClient;
use plexus_api::v1::{Target, WatchRequest};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tower::retry::backoff::{Backoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use crate::config::Config;
use crate::destinations::{DestinationSource, Resolution, ResolveFuture, sweep_period};
use crate::inbound::policy::{self, PolicyWatch};
use crate::tls::MeshTls;
use plexus_core::KeepAlive;
use plexus_core::memory::{self, TrimAfterSweeps};

pub use server_policy::watch_server_policy;
pub use update::apply_update;

/// How the proxy talks to the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `http://host:port` of the controller's gRPC server.
    pub addr: String,
    /// The proxy's own namespace, so short names resolve as its pod's resolver would.
    pub context_namespace: String,
    /// Who is asking, for the controller's logs and metrics.
    pub proxy_id: String,
    /// How long a first lookup waits for the controller before the target is
    /// forwarded as not meshed (passthrough to its original destination).
    pub first_answer_timeout: Duration,
    /// A target nobody holds or resolved for this long loses its watch.
    pub idle_timeout: Duration,
    /// PINGs on the channel ([`KeepAlive::CONTROL_PLANE`] outside tests).
    pub keep_alive: KeepAlive,
}

/// The controller (`PLEXUS_CONTROLLER_ADDR`) as the proxy's source of
/// destinations and of its own inbound policy.
pub struct Controller {
    pub destinations: Arc<ControllerDestinations>,
    pub policy: PolicyWatch,
}

impl Controller {
    /// `None` without `PLEXUS_CONTROLLER_ADDR`. Over TLS (the controller
    /// verified as `PLEXUS_CONTROLLER_IDENTITY`) when the proxy has an
    /// identity, else plaintext (a controller run with `--grpc-plaintext`).
    pub fn connect(
        config: &Config,
        mesh: Option<&MeshTls>,
    ) -> Result<Option<Self>, tonic::transport::Error> {
        let Some(addr) = &config.controller_addr else {
            return Ok(None);
        };
        let channel = match mesh {
            Some(mesh) => mesh.controller_channel_to(addr)?,
            None => plaintext_channel(&format!("http://{addr}"), KeepAlive::CONTROL_PLANE)?,
        };
        let namespace = config
            .pod_namespace
            .clone()
            .or_else(|| mesh.map(|m| m.identity().namespace().to_owned()))
            .unwrap_or_else(|| "default".to_owned());
        let pod = config.pod_name.clone().unwrap_or_default();
        let destinations = ControllerDestinations::with_channel(
            channel.clone(),
            ControllerConfig {
                addr: format!("http://{addr}"),
                context_namespace: namespace.clone(),
                proxy_id: if pod.is_empty() {
                    "plexus-proxy".to_owned()
                } else {
                    format!("{namespace}/{pod}")
                },
                first_answer_timeout: FIRST_ANSWER_TIMEOUT,
                idle_timeout: config.destination_idle_timeout,
                keep_alive: KeepAlive::CONTROL_PLANE,
            },
        );
        let policy = if pod.is_empty() {
            // WatchServer names the workload by its pod.
            tracing::warn!(
                "PLEXUS_POD_NAME unset: the inbound policy comes from the environment only"
            );
            policy::fixed(&config.inbound_policy)
        } else {
            watch_server_policy(
                channel,
                plexus_api::v1::ServerRequest {
                    namespace,
                    pod,
                    service_account: config.service_account.clone().unwrap_or_default(),
                },
                &config.inbound_policy,
            )
        };
        Ok(Some(Self {
            destinations,
            policy,
        }))
    }
}

/// How long a first lookup waits for the controller before forwarding the
/// target as not meshed.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// The most targets watched at once. Far above what a workload talks to
/// within an idle timeout (a pod calls tens of Services), low enough that an
/// application resolving every address it can name costs the proxy and the
/// controller a bounded number of streams (each a few KiB on both sides).
pub const MAX_WATCHED_TARGETS: usize = 16_384;

/// Targets as the controller describes them, watched on demand.
pub struct ControllerDestinations {
    client: DestinationClient<Channel>,
    config: ControllerConfig,
    watches: Mutex<HashMap<String, Watched>>,
    /// [`MAX_WATCHED_TARGETS`]; smaller in tests.
    max_watched: usize,
    /// Set while lookups find every slot held; logged once per episode.
    full: AtomicBool,
}

/// What the proxy knows of one watched target.
#[derive(Debug, Clone)]
enum Status {
    /// No answer yet since the watch began.
    Pending,
    NotMeshed,
    Meshed(watch::Receiver<Arc<Target>>),
}

struct Watched {
    status: watch::Receiver<Status>,
    /// Shared with the task that feeds it; its receiver count tells whether
    /// anything (a `Logical`) still uses the target.
    target: Arc<watch::Sender<Arc<Target>>>,
    last_used: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ControllerDestinations {
    /// Connects lazily over plaintext (a controller run with
    /// `--grpc-plaintext`): a controller that is down at start only delays
    /// the first answers, it does not stop the proxy.
    pub fn new(config: ControllerConfig) -> Result<Arc<Self>, tonic::transport::Error> {
        let channel = plaintext_channel(&config.addr, config.keep_alive)?;
        Ok(Self::with_channel(channel, config))
    }

    /// Over a given channel: the TLS one of `MeshTls::controller_channel_to`.
    pub fn with_channel(channel: Channel, config: ControllerConfig) -> Arc<Self> {
        Self::with_limit(channel, config, MAX_WATCHED_TARGETS)
    }

    fn with_limit(channel: Channel, config: ControllerConfig, max_watched: usize) -> Arc<Self> {
        let this = Arc::new(Self {
            client: DestinationClient::new(channel),
            config,
            watches: Mutex::new(HashMap::new()),
            max_watched,
            full: AtomicBool::new(false),
        });
        tokio::spawn(sweep_idle(Arc::downgrade(&this)));
        this
    }

    /// The status of `key`'s watch, begun now if there is none; `None` when
    /// [`MAX_WATCHED_TARGETS`] are watched and none of them is idle.
    fn status_of(&self, key: &str) -> Option<watch::Receiver<Status>> {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watched) = watches.get_mut(key) {
            watched.last_used = Instant::now();
            return Some(watched.status.clone());
        }
        if watches.len() >= self.max_watched {
            drop_idle(&mut watches, self.config.idle_timeout);
            if watches.len() >= self.max_watched {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        limit = self.max_watched,
                        "every destination watch is in use; new targets are forwarded as not meshed"
                    );
                }
                return None;
            }
        }
        self.full.store(false, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Status::Pending);
        let target = Arc::new(watch::Sender::new(Arc::new(Target::default())));
        let request = WatchRequest {
            target: key.to_string(),
            context_namespace: self.config.context_namespace.clone(),
            proxy_id: self.config.proxy_id.clone(),
        };
        let task = tokio::spawn(follow(self.client.clone(), request, tx, target.clone()));
        watches.insert(
            key.to_string(),
            Watched {
                status: rx.clone(),
                target,
                last_used: Instant::now(),
                task,
            },
        );
        Some(rx)
    }
}

impl DestinationSource for ControllerDestinations {
    fn resolve<'a>(&'a self, key: &'a str) -> ResolveFuture<'a> {
        let Some(mut status) = self.status_of(key) else {
            return Box::pin(std::future::ready(Resolution::NotMeshed));
        };
        let timeout = self.config.first_answer_timeout;
        Box::pin(async move {
            let answered =
                tokio::time::timeout(timeout, status.wait_for(|s| !matches!(s, Status::Pending)))
                    .await;
            match answered {
                Ok(Ok(status)) => match &*status {
                    Status::Meshed(target) => Resolution::Meshed(target.clone()),
                    Status::NotMeshed | Status::Pending => Resolution::NotMeshed,
                },
                _ => {
                    tracing::warn!(
                        target = key,
                        "controller gave no answer in time; forwarding as not meshed"
                    );
                    Resolution::NotMeshed
                }
            }
        })
    }

    fn known(&self) -> Vec<Arc<Target>> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .values()
            .filter_map(|w| match &*w.status.borrow() {
                Status::Meshed(target) => Some(target.borrow().clone()),
                _ => None,
            })
            .collect()
    }
}

/// Keeps one target's watch stream open for as long as the target is watched.
async fn follow(
    client: DestinationClient<Channel>,
    request: WatchRequest,
    status: watch::Sender<Status>,
    target: Arc<watch::Sender<Arc<Target>>>,
) {
    let what = request.target.clone();
    follow_stream(
        &what,
        || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.watch(request).await }
        },
        |update| apply(&status, &target, update),
        || status.is_closed(),
    )
    .await;
}

/// Keeps a server stream of the controller's open: every message goes to
/// `on_message`; when the stream breaks or cannot be opened it is opened
/// again after a backoff, and meanwhile the last state keeps applying.
/// Returns once `closed` says nobody listens any more.
async fn follow_stream<T, Open, Opening>(
    what: &str,
    mut open: Open,
    mut on_message: impl FnMut(T),
    closed: impl Fn() -> bool,
) where
    Open: FnMut() -> Opening,
    Opening:
        std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let mut reconnect = reconnect_backoff();
    let mut backoff = reconnect.make_backoff();
    loop {
        match open().await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            backoff = reconnect.make_backoff();
                            on_message(message);
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(what, %error, "controller watch broke");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(what, %error, "controller watch failed"),
        }
        if closed() {
            return;
        }
        backoff.next_backoff().await;
    }
}

fn apply(
    status: &watch::Sender<Status>,
    target: &watch::Sender<Arc<Target>>,
    update: plexus_api::v1::DestinationUpdate,
) {
    if update.not_meshed {
        status.send_replace(Status::NotMeshed);
        return;
    }
    target.send_modify(|current| *current = Arc::new(apply_update(current, update)));
    if !matches!(*status.borrow(), Status::Meshed(_)) {
        status.send_replace(Status::Meshed(target.subscribe()));
    }
}

/// Drops, every [`sweep_period`], the watches of targets nobody resolved
/// recently and nobody holds; dropping one aborts its task, which ends its
/// stream (the controller's watch count drops). Freed memory goes back to
/// the system.
async fn sweep_idle(this: std::sync::Weak<ControllerDestinations>) {
    let mut trim = TrimAfterSweeps::default();
    loop {
        let period = match this.upgrade() {
            Some(this) => sweep_period(this.config.idle_timeout),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(this) = this.upgrade() else { return };
        let mut watches = this.watches.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = drop_idle(&mut watches, this.config.idle_timeout);
        drop(watches);
        trim.swept(dropped);
    }
}

/// Whether any watch was dropped.
fn drop_idle(watches: &mut HashMap<String, Watched>, idle_timeout: Duration) -> bool {
    let before = watches.len();
    watches.retain(|_, watched| {
        // One receiver lives in the status itself; more mean a user holds it.
        let held = watched.target.receiver_count() > 1;
        held || watched.last_used.elapsed() < idle_timeout
    });
    memory::shrink_swept(watches);
    watches.len() < before
}

/// A lazily connecting plaintext channel to `addr` (`http://host:port`).
pub fn plaintext_channel(
    addr: &str,
    keep_alive: KeepAlive,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(addr.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(pinged(endpoint, keep_alive).connect_lazy())
}

/// HTTP/2 PINGs on the controller channel, idle or not: a controller gone
/// silently (its packets dropped, no RST) is noticed within
/// [`KeepAlive::bound`], the channel reconnects, and the watches keep what
/// they last knew meanwhile.
pub(crate) fn pinged(endpoint: Endpoint, keep_alive: KeepAlive) -> Endpoint {
    endpoint
        .http2_keep_alive_interval(keep_alive.interval)
        .keep_alive_timeout(keep_alive.timeout)
        .keep_alive_while_idle(true)
}

/// The first wait before reopening a broken watch: short, since a
/// controller rollout usually has another replica ready at once.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest wait, jitter included. The hand-written backoff this replaced
/// doubled up to 5 s and then added up to half again (7.5 s at most); tower's
/// bound includes the jitter, so 7.5 s keeps the longest wait a proxy can be
/// without its controller the same.
const RECONNECT_MAX: Duration = Duration::from_millis(7_500);
/// Up to half again the doubled delay, as before: enough that proxies whose
/// streams broke together (a controller restart) do not reconnect in lockstep.
const RECONNECT_JITTER: f64 = 0.5;

/// Exponential backoff with jitter between reconnection attempts; a new
/// backoff (from the first delay) is made whenever a stream delivers.
fn reconnect_backoff() -> ExponentialBackoffMaker {
    ExponentialBackoffMaker::new(
        RECONNECT_MIN,
        RECONNECT_MAX,
        RECONNECT_JITTER,
        HasherRng::default(),
    )
    .expect("the reconnect bounds are constants: min <= max, jitter in 0..=100")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long the next wait of `backoff` is (tokio's clock is paused).
    fn next_wait(backoff: &mut impl Backoff<Future = tokio::time::Sleep>) -> Duration {
        let sleep = backoff.next_backoff();
        sleep.deadline() - Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_back_off_to_the_cap_and_start_over() {
        let mut reconnect = reconnect_backoff();
        let mut backoff = reconnect.make_backoff();
        let first = next_wait(&mut backoff);
        assert!(first >= RECONNECT_MIN && first <= RECONNECT_MIN.mul_f64(1.5));
        for _ in 0..20 {
            assert!(next_wait(&mut backoff) <= RECONNECT_MAX);
        }
        assert_eq!(next_wait(&mut backoff), RECONNECT_MAX);
        let mut backoff = reconnect.make_backoff();
        assert!(next_wait(&mut backoff) <= RECONNECT_MIN.mul_f64(1.5));
    }

    fn watched(destinations: &ControllerDestinations) -> Vec<String> {
        let watches = destinations.watches.lock().unwrap();
        let mut keys: Vec<String> = watches.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// At the limit a new target is refused (forwarded as not meshed) while
    /// every watch is recent or held; once some are idle, an idle unheld one
    /// is dropped to make room and a held one stays.
    #[tokio::test(start_paused = true)]
    async fn at_the_limit_an_idle_watch_makes_room_and_a_busy_one_refuses() {
        let idle_timeout = Duration::from_secs(30);
        let config = ControllerConfig {
            // Nothing listens: the watches only ever retry.
            addr: "http://127.0.0.1:1".into(),
            context_namespace: "default".into(),
            proxy_id: "test".into(),
            first_answer_timeout: Duration::from_secs(3),
            idle_timeout,
            keep_alive: KeepAlive::CONTROL_PLANE,
        };
        let channel = plaintext_channel(&config.addr, config.keep_alive).unwrap();
        let destinations = ControllerDestinations::with_limit(channel, config, 2);

        assert!(destinations.status_of("a:80").is_some());
        assert!(destinations.status_of("b:80").is_some());
        assert!(destinations.status_of("c:80").is_none(), "none is idle");
        assert!(matches!(
            destinations.resolve("c:80").await,
            Resolution::NotMeshed
        ));
        assert!(
            destinations.status_of("a:80").is_some(),
            "a watched target is still served"
        );
        assert_eq!(watched(&destinations), ["a:80", "b:80"]);

        // `a:80` is meshed and held: its status keeps one receiver of the
        // target and a Logical another. Both go unused past the timeout.
        let _held = {
            let watches = destinations.watches.lock().unwrap();
            let target = &watches["a:80"].target;
            (target.subscribe(), target.subscribe())
        };
        tokio::time::advance(idle_timeout + Duration::from_secs(1)).await;
        assert!(destinations.status_of("c:80").is_some());
        assert_eq!(watched(&destinations), ["a:80", "c:80"]);
        assert!(
            destinations.status_of("d:80").is_none(),
            "c:80 is recent, a:80 held"
        );
    }
}

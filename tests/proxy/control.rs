//! The proxy's Destination API client against a real tonic server fed by the
//! test: snapshots, deltas, "not meshed", and a controller restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexus_api::v1::destination_server::{Destination, DestinationServer};
use plexus_api::v1::{
    Backend, BackendTable, DestinationUpdate, Endpoint, RouteTable, ServerPolicy, ServerRequest,
    Target, WatchRequest,
};
use plexus_core::KeepAlive;
use plexus_proxy::control::{ControllerConfig, ControllerDestinations};
use plexus_proxy::destinations::{DestinationSource, Resolution};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type UpdateTx = mpsc::Sender<Result<DestinationUpdate, Status>>;

/// A controller whose streams the test writes to: each Watch call hands its
/// target and sending half to the test.
#[derive(Clone)]
struct FakeController {
    calls: mpsc::UnboundedSender<(String, UpdateTx)>,
}

#[tonic::async_trait]
impl Destination for FakeController {
    type WatchStream = ReceiverStream<Result<DestinationUpdate, Status>>;
    type WatchServerStream = ReceiverStream<Result<ServerPolicy, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.calls.send((request.into_inner().target, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn watch_server(
        &self,
        _: Request<ServerRequest>,
    ) -> Result<Response<Self::WatchServerStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct RunningController {
    calls: mpsc::UnboundedReceiver<(String, UpdateTx)>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl RunningController {
    async fn start(addr: SocketAddr) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(DestinationServer::new(FakeController { calls: calls_tx }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            );
        let done = tokio::spawn(async move {
            let _ = server.await;
        });
        (
            Self {
                calls,
                stop: Some(stop),
                done,
            },
            addr,
        )
    }

    async fn next_watch(&mut self) -> (String, UpdateTx) {
        tokio::time::timeout(Duration::from_secs(10), self.calls.recv())
            .await
            .expect("the proxy opened a watch in time")
            .expect("controller running")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.done.abort();
        let _ = self.done.await;
    }
}

fn config(addr: SocketAddr, first_answer_timeout: Duration) -> ControllerConfig {
    ControllerConfig {
        addr: format!("http://{addr}"),
        context_namespace: "default".into(),
        proxy_id: "test".into(),
        first_answer_timeout,
        idle_timeout: Duration::from_secs(300),
        keep_alive: KeepAlive::CONTROL_PLANE,
    }
}

fn target_with_backend(backend: &str, endpoints: &[&str]) -> Target {
    Target {
        name: "web.default.svc.cluster.local:80".into(),
        protocol: None,
        routes: Some(RouteTable {
            default_backend: backend.into(),
            ..Default::default()
        }),
        backends: Some(BackendTable {
            backends: [(
                backend.to_string(),
                Backend {
                    name: backend.into(),
                    endpoints: endpoints
                        .iter()
                        .map(|address| Endpoint {
                            address: address.to_string(),
                            ready: true,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )]
            .into(),
        }),
    }
}

fn endpoint_count(target: &Target) -> usize {
    target
        .backends
        .as_ref()
        .map(|b| b.backends.values().map(|b| b.endpoints.len()).sum())
        .unwrap_or(0)
}

async fn wait_until(
    rx: &mut tokio::sync::watch::Receiver<Arc<Target>>,
    f: impl Fn(&Target) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|t| f(t)))
        .await
        .expect("update arrived in time")
        .expect("sender alive");
}

#[tokio::test]
async fn snapshot_then_delta_then_restart_keeps_last_state() {
    let (mut controller, addr) = RunningController::start("127.0.0.1:0".parse().unwrap()).await;
    let source =
        ControllerDestinations::new(config(addr, Duration::from_secs(10))).expect("config");

    let lookup = {
        let source = source.clone();
        tokio::spawn(async move { source.resolve("web:80").await })
    };
    let (asked, stream) = controller.next_watch().await;
    assert_eq!(asked, "web:80");
    stream
        .send(Ok(DestinationUpdate {
            snapshot: true,
            target: Some(target_with_backend("web", &["10.0.0.1:80"])),
            ..Default::default()
        }))
        .await
        .expect("send snapshot");
    let Resolution::Meshed(mut target) = lookup.await.expect("lookup") else {
        panic!("web is meshed");
    };
    assert_eq!(endpoint_count(&target.borrow()), 1);

    // A delta carrying only backends keeps the routes.
    stream
        .send(Ok(DestinationUpdate {
            snapshot: false,
            target: Some(Target {
                backends: target_with_backend("web", &["10.0.0.1:80", "10.0.0.2:80"]).backends,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("send delta");
    wait_until(&mut target, |t| endpoint_count(t) == 2).await;
    assert_eq!(
        target.borrow().routes.as_ref().unwrap().default_backend,
        "web"
    );

    // The controller goes away: the proxy keeps what it knew.
    drop(stream);
    controller.stop().await;
    assert_eq!(endpoint_count(&target.borrow()), 2);
    assert_eq!(
        source.resolve("web:80").await.meshed_endpoints(),
        Some(2),
        "lookups during the outage still answer from the last state"
    );

    // It comes back on the same address: the proxy reconnects and takes the new snapshot.
    let (mut controller, _) = RunningController::start(addr).await;
    let (asked, stream) = controller.next_watch().await;
    assert_eq!(asked, "web:80");
    stream
        .send(Ok(DestinationUpdate {
            snapshot: true,
            target: Some(target_with_backend("web", &["10.0.0.3:80"])),
            ..Default::default()
        }))
        .await
        .expect("send snapshot");
    wait_until(&mut target, |t| {
        t.backends.as_ref().is_some_and(|b| {
            b.backends["web"]
                .endpoints
                .iter()
                .map(|e| e.address.as_str())
                .eq(["10.0.0.3:80"])
        })
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn unknown_target_is_not_meshed() {
    let (mut controller, addr) = RunningController::start("127.0.0.1:0".parse().unwrap()).await;
    let source =
        ControllerDestinations::new(config(addr, Duration::from_secs(10))).expect("config");
    let lookup = {
        let source = source.clone();
        tokio::spawn(async move { source.resolve("10.1.2.3:5432").await })
    };
    let (_, stream) = controller.next_watch().await;
    stream
        .send(Ok(DestinationUpdate {
            not_meshed: true,
            ..Default::default()
        }))
        .await
        .expect("send");
    assert!(matches!(
        lookup.await.expect("lookup"),
        Resolution::NotMeshed
    ));
    assert!(source.known().is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn unreachable_controller_means_not_meshed_after_the_first_answer_timeout() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let source =
        ControllerDestinations::new(config(addr, Duration::from_millis(300))).expect("config");
    let started = tokio::time::Instant::now();
    let resolution = tokio::time::timeout(Duration::from_secs(10), source.resolve("web:80"))
        .await
        .expect("resolve is bounded");
    assert!(matches!(resolution, Resolution::NotMeshed));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

trait MeshedEndpoints {
    fn meshed_endpoints(&self) -> Option<usize>;
}

impl MeshedEndpoints for Resolution {
    fn meshed_endpoints(&self) -> Option<usize> {
        match self {
            Resolution::Meshed(rx) => Some(endpoint_count(&rx.borrow())),
            Resolution::NotMeshed => None,
        }
    }
}

/// A TCP relay to `to` that can freeze the connections it carries: they stay
/// open, but nothing passes any more (a controller whose packets are
/// dropped, with no RST). Connections accepted after a freeze pass.
struct FreezingRelay {
    addr: SocketAddr,
    freezes: tokio::sync::watch::Sender<u32>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FreezingRelay {
    async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (freezes, frozen) = tokio::sync::watch::channel(0u32);
        let accepting = tokio::spawn(async move {
            let mut carried = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let mut frozen = frozen.clone();
                let since = *frozen.borrow();
                carried.spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = async {
                            let _ = frozen.wait_for(|freezes| *freezes != since).await;
                        } => {
                            // Open and silent until the relay is dropped.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            freezes,
            accepting,
        }
    }

    fn freeze(&self) {
        self.freezes.send_modify(|freezes| *freezes += 1);
    }
}

impl Drop for FreezingRelay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

#[tokio::test]
async fn a_silently_dead_controller_is_noticed_by_keep_alive_and_the_watch_reopens() {
    let (mut controller, addr) = RunningController::start("127.0.0.1:0".parse().unwrap()).await;
    let relay = FreezingRelay::start(addr).await;
    // Shorter than the binary's, so the test waits seconds, not tens of them.
    let keep_alive = KeepAlive {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
    };
    let source = ControllerDestinations::new(ControllerConfig {
        keep_alive,
        ..config(relay.addr, Duration::from_secs(10))
    })
    .expect("config");
    let lookup = {
        let source = source.clone();
        tokio::spawn(async move { source.resolve("web:80").await })
    };
    let (_, stream) = controller.next_watch().await;
    stream
        .send(Ok(DestinationUpdate {
            snapshot: true,
            target: Some(target_with_backend("web", &["10.0.0.1:80"])),
            ..Default::default()
        }))
        .await
        .expect("send snapshot");
    let Resolution::Meshed(target) = lookup.await.expect("lookup") else {
        panic!("web is meshed");
    };

    // Packets dropped from now on: no FIN, no RST, the stream stays open.
    relay.freeze();
    let frozen_at = tokio::time::Instant::now();
    let reopened = tokio::time::timeout(Duration::from_secs(30), controller.calls.recv())
        .await
        .expect("the dead controller connection was not noticed within 30 s")
        .expect("controller running");
    let noticed = frozen_at.elapsed();
    assert_eq!(reopened.0, "web:80");
    // The keep-alive's timeout at least, not an error on the frozen stream.
    assert!(noticed >= keep_alive.timeout, "{noticed:?}");
    assert_eq!(
        endpoint_count(&target.borrow()),
        1,
        "the last known state is kept meanwhile"
    );
    drop(stream);
    controller.stop().await;
}

//! The controller's pieces in-process, as the proxy tests meet them: a CA
//! with the Identity API (bootstrap tokens, TLS serving) in front of it and,
//! on the same TLS port, the Destination API over an index; that controller
//! on a file feed with two sidecars meshed by it; and its injector webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ObjectMeta;
use plexus_controller::admission::{Injector, service_dns_names};
use plexus_controller::destination::DestinationService;
use plexus_controller::grpc::{self, GrpcTransport};
use plexus_controller::identity::{
    BootstrapTokens, IdentityService, controller_server_config, webhook_server_config,
};
use plexus_controller::metrics::Metrics;
use plexus_core::KeepAlive;
use plexus_discovery::feed::{self, Readiness};
use plexus_discovery::index::{DEFAULT_CLUSTER_DOMAIN, Index, IndexConfig, SharedIndex};
use plexus_identity::{Ca, SpiffeId};
use plexus_inject::InjectConfig;
use plexus_proxy::RunningProxy;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::proxy::{TestProxy, proxy};
use crate::temp::TempDir;

/// The trust domain of every identity the tests make.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/<namespace>/sa/<sa>`.
pub fn id(namespace: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, namespace, sa).expect("SPIFFE ID")
}

/// A CA with the controller's Identity API in front of it.
pub struct Authority {
    pub ca: Arc<Ca>,
    pub addr: SocketAddr,
    pub tokens: Arc<BootstrapTokens>,
    pub trust_anchors: PathBuf,
    _dir: TempDir,
}

impl Authority {
    /// The Identity API alone, issuing certificates valid for `lifetime`.
    pub async fn start(lifetime: Duration) -> Self {
        Self::serve(lifetime, None).await
    }

    /// The controller as its binary serves it: the Identity API and, on
    /// the same TLS port, the Destination API over `index`.
    pub async fn controller(index: SharedIndex) -> Self {
        Self::serve(Duration::from_secs(3600), Some(index)).await
    }

    async fn serve(lifetime: Duration, destinations: Option<SharedIndex>) -> Self {
        let dir = TempDir::new("mtls");
        let ca = Arc::new(Ca::new_root(TRUST_DOMAIN, Duration::from_secs(3600)).expect("CA"));
        let trust_anchors = dir.join("ca.pem");
        std::fs::write(&trust_anchors, ca.trust_anchor_pem()).expect("write trust anchors");
        let tokens =
            Arc::new(BootstrapTokens::open(&dir.join("tokens"), TRUST_DOMAIN).expect("token dir"));
        let service = IdentityService::new(ca.clone(), tokens.clone()).with_lifetime(lifetime);
        let tls = controller_server_config(ca.clone(), id("plexus", "plexus-controller"))
            .expect("controller TLS");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut routes = Routes::new(service.into_server());
        if let Some(index) = destinations {
            let metrics = Arc::new(Metrics::new());
            routes = routes.add_service(DestinationService::new(index, metrics).into_server());
        }
        tokio::spawn(grpc::serve(
            listener,
            routes,
            GrpcTransport::Tls(tls),
            KeepAlive::CONTROL_PLANE,
        ));
        Self {
            ca,
            addr,
            tokens,
            trust_anchors,
            _dir: dir,
        }
    }

    /// The environment of a sidecar whose workload is `identity`.
    pub fn sidecar(&self, identity: &SpiffeId) -> TestProxy {
        let token = self.tokens.ensure(identity).expect("bootstrap token");
        proxy()
            .env("PLEXUS_IDENTITY", identity)
            .env("PLEXUS_IDENTITY_TOKEN_FILE", token.display())
            .env(
                "PLEXUS_IDENTITY_TRUST_ANCHORS",
                self.trust_anchors.display(),
            )
            .env("PLEXUS_IDENTITY_ADDR", self.addr)
    }
}

/// The controller (in-process, its index fed from a file) and the sidecars
/// of two pods of namespace `shop` taking identities and destinations from
/// it: `web-1` (service account `web`) in front of an app, and `frontend-1`
/// (service account `frontend`) to call it through.
pub struct MeshedPair {
    pub server: RunningProxy,
    pub client: RunningProxy,
    /// The feed file: writing it changes what the controller serves.
    pub file: PathBuf,
    /// The file feed's readiness.
    pub ready: Readiness,
    controller: Authority,
    _dir: TempDir,
}

impl MeshedPair {
    /// The server sidecar in front of `app`; the feed file is `objects` of
    /// the server sidecar's inbound port.
    pub async fn start(app: SocketAddr, objects: impl FnOnce(u16) -> String) -> Self {
        let index = SharedIndex::new(IndexConfig {
            trust_domain: TRUST_DOMAIN.into(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
        });
        let controller = Authority::controller(index.clone()).await;
        let server = meshed_sidecar(&controller, "web", "web-1")
            .env("PLEXUS_INBOUND_APP_ADDR", app)
            .start()
            .await;
        let client = meshed_sidecar(&controller, "frontend", "frontend-1")
            .start()
            .await;
        let dir = TempDir::new("meshed-pair");
        let file = dir.join("objects.yaml");
        std::fs::write(&file, objects(server.inbound_addr.port())).expect("feed file");
        let ready = Readiness::default();
        tokio::spawn(feed::file::run(
            file.clone(),
            index,
            ready.clone(),
            |_: &Index| {},
        ));
        Self {
            server,
            client,
            file,
            ready,
            controller,
            _dir: dir,
        }
    }
}

impl MeshedPair {
    /// The sidecar of one more pod of `shop` (service account `sa`), taking
    /// its identity and destinations from the pair's controller.
    pub fn sidecar(&self, sa: &str, pod: &str) -> TestProxy {
        meshed_sidecar(&self.controller, sa, pod)
    }
}

fn meshed_sidecar(controller: &Authority, sa: &str, pod: &str) -> TestProxy {
    controller
        .sidecar(&id("shop", sa))
        .env("PLEXUS_CONTROLLER_ADDR", controller.addr)
        .env("PLEXUS_POD_NAMESPACE", "shop")
        .env("PLEXUS_POD_NAME", pod)
}

/// The controller's injector webhook on loopback, as the chart deploys it: HTTPS
/// with a certificate from `ca` for the Service `plexus-injector` in namespace
/// `plexus`, and namespace `shop` annotated for injection in its index.
pub async fn injector(ca: Arc<Ca>) -> SocketAddr {
    let index = SharedIndex::new(IndexConfig::default());
    index.lock().apply(Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            annotations: Some([("plexus.io/inject".into(), "enabled".into())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    });
    let config = InjectConfig {
        trust_anchors: ca.trust_anchor_pem().to_owned(),
        ..InjectConfig::default()
    };
    let tls = webhook_server_config(
        ca,
        service_dns_names("plexus-injector", "plexus", "cluster.local"),
    )
    .expect("webhook TLS");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(Injector { index, config }.serve(listener, tls));
    addr
}

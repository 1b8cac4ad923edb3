//! Two `plexus-controller` replicas on one Lease, against the API server
//! stand-in: exactly one leads and writes (caBundle, route status, the CA
//! Secret), the follower still serves the webhook from the same CA, and when
//! the leader dies the follower takes over within the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use plexus_identity::{Ca, CaMaterial};
use plexus_tests::apiserver::ApiServer;
use plexus_tests::bins::{ControllerProcess, controller_status, start_controller_on};
use plexus_tests::temp::TempDir;
use plexus_tests::wait::within;
use serde_json::json;

use crate::injector_https::{POD, post, send};

const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
const SECRETS: &str = "/api/v1/secrets";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
/// Short, so the test sees a takeover; generous bounds around it.
const LEASE_SECONDS: u64 = 2;
const BOUND: Duration = Duration::from_secs(30);

fn webhook_configuration() -> serde_json::Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "mesh-injector"},
           "webhooks": [{"name": "inject.plexus.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                         "clientConfig": {"service": {"name": "plexus-injector", "namespace": "mesh", "path": "/inject"}}}]})
}

async fn replica(api: &ApiServer, dir: &TempDir, pod: &str) -> ControllerProcess {
    let duration = format!("--lease-duration={LEASE_SECONDS}");
    start_controller_on(
        api,
        dir,
        &[
            "--namespace=mesh",
            "--webhook-configuration=mesh-injector",
            &duration,
        ],
        &[("POD_NAME", pod)],
    )
    .await
}

/// The replicas' `leader` flags from `/status`, once every one answers it.
async fn leaders(replicas: &[&ControllerProcess]) -> Vec<bool> {
    let mut flags = Vec::new();
    for replica in replicas {
        flags.push(controller_status(&replica.admin).await["leader"] == true);
    }
    flags
}

fn holder(api: &ApiServer) -> Option<String> {
    let lease: Lease =
        serde_json::from_value(api.object(LEASES, "mesh", "plexus-controller")?).ok()?;
    lease.spec?.holder_identity
}

fn bundle(api: &ApiServer) -> Option<Vec<u8>> {
    let config = api.object(WEBHOOKS, "", "mesh-injector")?;
    let config: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(config).ok()?;
    config.webhooks?.pop()?.client_config.ca_bundle.map(|b| b.0)
}

fn ca_of(api: &ApiServer) -> Ca {
    let secret: Secret = serde_json::from_value(
        api.object(SECRETS, "mesh", "plexus-ca")
            .expect("the CA Secret"),
    )
    .unwrap();
    let data = secret.data.unwrap();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    Ca::from_material(&CaMaterial {
        certificate_pem: text("tls.crt"),
        key_pem: text("tls.key"),
        trust_anchor_pem: text("ca.crt"),
    })
    .unwrap()
}

#[tokio::test]
async fn one_replica_writes_and_the_other_takes_over_when_it_dies() {
    let api = ApiServer::start().await;
    api.apply(WEBHOOKS, webhook_configuration());
    api.apply(
        HTTP_ROUTES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"namespace": "shop", "name": "split", "generation": 1},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]}}),
    );
    let dirs = [TempDir::new("leader-a"), TempDir::new("leader-b")];
    let names = ["controller-a", "controller-b"];
    let mut replicas = [
        replica(&api, &dirs[0], names[0]).await,
        replica(&api, &dirs[1], names[1]).await,
    ];

    // Exactly one leads, and the Lease names it.
    let flags = within(BOUND, "one leader among two replicas", || async {
        let flags = leaders(&replicas.iter().collect::<Vec<_>>()).await;
        match flags.iter().filter(|l| **l).count() {
            1 => Ok(flags),
            n => Err(format!("{n} leaders")),
        }
    })
    .await;
    let leader = usize::from(!flags[0]);
    let follower = 1 - leader;
    assert_eq!(holder(&api).as_deref(), Some(names[leader]));

    // The leader made the one CA Secret both serve from, and put its trust
    // anchor in the configuration it was named.
    let want = within(BOUND, "the caBundle patched", || async {
        bundle(&api).ok_or_else(|| "no caBundle yet".to_string())
    })
    .await;
    let ca = ca_of(&api);
    assert_eq!(want, ca.trust_anchor_pem().as_bytes());
    within(BOUND, "the route status written", || async {
        match api.status_patches(HTTP_ROUTES).len() {
            0 => Err("no status yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;

    // The follower serves the webhook, with a certificate from that CA.
    let webhook: std::net::SocketAddr = replicas[follower].webhook.parse().unwrap();
    let (status, _) = within(BOUND, "the follower's webhook answers", || {
        send(
            &ca,
            webhook,
            "plexus-injector.mesh.svc",
            post("/inject", POD),
        )
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        api.status_patches(HTTP_ROUTES).len(),
        1,
        "only the leader wrote the route status"
    );

    // The leader dies without releasing the Lease: the follower takes over
    // once it expires, and writes from then on.
    replicas[leader].process.kill().await;
    let takeover = tokio::time::Instant::now();
    within(BOUND, "the follower leads", || async {
        match controller_status(&replicas[follower].admin).await["leader"] == true {
            true => Ok(()),
            false => Err("not yet".to_string()),
        }
    })
    .await;
    assert!(
        takeover.elapsed() < Duration::from_secs(3 * LEASE_SECONDS + 5),
        "took over in {:?}",
        takeover.elapsed()
    );
    assert_eq!(holder(&api).as_deref(), Some(names[follower]));
    api.apply(WEBHOOKS, webhook_configuration());
    within(BOUND, "the new leader restores the caBundle", || async {
        match bundle(&api) {
            Some(bundle) if bundle == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

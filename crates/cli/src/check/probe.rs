//! Does the webhook answer? Asked end to end: a server-side dry-run create of
//! a Pod (`dryRun=All`: admitted, mutated and validated like any pod, stored
//! nowhere), which makes the API server call the injector (it has
//! `sideEffects: None`, so dry runs reach it). The pod returned must carry the
//! proxy. This is the path every real pod takes: DNS and network from the API
//! server to the Service, TLS verified with the caBundle, the JSON Patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use plexus_core::PROXY_CONTAINER;
use plexus_core::annotations::INJECT;

use super::{CheckCommand, CheckResult, INJECTION, carries_proxy};

/// The probe pod's name prefix; the API server completes it, so it never
/// collides with a pod that exists.
const PROBE_NAME_PREFIX: &str = "plexusctl-check-";

pub async fn check(client: &kube::Client, options: &CheckCommand) -> CheckResult {
    let namespace = &options.probe_namespace;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let shown = format!("dry-run Pod in {namespace}");
    match pods.create(&dry_run, &probe_pod()).await {
        Ok(pod) if carries_proxy(&pod) => CheckResult::pass(
            INJECTION,
            format!("{shown}: the webhook added {PROXY_CONTAINER}"),
        ),
        Ok(_) => CheckResult::fail(
            INJECTION,
            format!("{shown} came back without {PROXY_CONTAINER}: the webhook did not inject it"),
            format!(
                "the API server's call to the webhook failed or was skipped, and the chart's \
                 failurePolicy Ignore hides the failure: the Service {}/plexus-injector has no \
                 ready endpoints or the API server cannot reach it (port 8443 of the controller \
                 pods), or TLS failed (a caBundle that does not hold the controller's CA: see \
                 the webhook line), or the webhook's namespaceSelector excludes {namespace} \
                 (try --probe-namespace); the controller logs \"injecting the proxy\" for each \
                 pod it injects",
                options.namespace
            ),
        ),
        Err(e) => CheckResult::fail(
            INJECTION,
            format!("{shown}: {e}"),
            format!(
                "plexusctl check needs `create` on pods in {namespace} (a dry run stores \
                 nothing); an error that names a webhook is the webhook failing under \
                 failurePolicy Fail"
            ),
        ),
    }
}

/// A pod that asks for injection itself (the pod's `plexus.io/inject` wins
/// over its namespace's), so any namespace the webhook's selector admits will do.
fn probe_pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(PROBE_NAME_PREFIX.to_owned()),
            annotations: Some(BTreeMap::from([(INJECT.to_owned(), "enabled".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "probe".to_owned(),
                // Never pulled: a dry run starts nothing.
                image: Some("registry.k8s.io/pause:3.10".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

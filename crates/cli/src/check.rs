//! `plexusctl check`: what a user runs before and after installing Plexus.
//! Each check is one line, ✔ or ✘, and a failed one says what to do next.
//! It reads the cluster through the API server (the default kubeconfig or the
//! in-cluster configuration): `get` rights, and `create` on pods in the probe
//! namespace for one dry-run pod that is never stored.

mod gateway_api;
mod probe;
pub mod release;
mod webhook;

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use plexus_core::PROXY_CONTAINER;
use plexus_core::annotations::INJECT;

pub use gateway_api::{BUNDLE_VERSION, CHANNEL};

/// The chart's name for the controller's Deployment (namespaced, so not per release).
const CONTROLLER_DEPLOYMENT: &str = "plexus-controller";

/// Check the cluster and the Plexus installation; exits non-zero if a check fails.
#[derive(Debug, clap::Args)]
pub struct CheckCommand {
    /// The control plane's namespace.
    #[arg(long, default_value = "plexus")]
    pub namespace: String,
    /// The Helm release: the chart names cluster-scoped objects (the webhook
    /// configuration) after it and the namespace.
    #[arg(long, default_value = "plexus")]
    pub release: String,
    /// Where the dry-run probe pod is created: any namespace the webhook's
    /// namespaceSelector admits (not the control plane's, not kube-system).
    #[arg(long, default_value = "default")]
    pub probe_namespace: String,
    /// Also check that this meshed pod's proxy is ready (it has its certificate).
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod)]
    pub pod: Option<(String, String)>,
}

fn parse_pod(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
    }
}

impl CheckCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let results = match kube::Client::try_default().await {
            Ok(client) => run_checks(&client, &self).await,
            Err(e) => vec![CheckResult::fail(
                API_SERVER,
                format!("no Kubernetes client: {e}"),
                "set KUBECONFIG or the current context (kubectl config current-context)",
            )],
        };
        for result in &results {
            println!("{result}");
        }
        let failed = results.iter().filter(|r| !r.passed).count();
        anyhow::ensure!(failed == 0, "{failed} of {} checks failed", results.len());
        Ok(())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub passed: bool,
    /// What was found (passed) or what is wrong (failed).
    pub detail: String,
    /// What to do about a failure.
    pub hint: Option<String>,
}

impl CheckResult {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            passed: true,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name,
            passed: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.passed { '✔' } else { '✘' };
        write!(f, "{mark} {}: {}", self.name, self.detail)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

pub const API_SERVER: &str = "API server reachable";
pub const GATEWAY_API: &str = "Gateway API CRDs present";
pub const CONTROLLER: &str = "controller ready";
pub const WEBHOOK: &str = "webhook configured";
pub const INJECTION: &str = "webhook injects pods";
pub const POD_PROXY: &str = "pod's proxy ready";

/// Runs every check in order. When the API server cannot be reached the
/// others are not tried: they would only repeat that failure.
pub async fn run_checks(client: &kube::Client, options: &CheckCommand) -> Vec<CheckResult> {
    let reachable = api_server(client).await;
    if !reachable.passed {
        return vec![reachable];
    }
    let mut results = vec![
        reachable,
        gateway_api::check(client).await,
        controller(client, options).await,
        webhook::check(client, options).await,
        probe::check(client, options).await,
    ];
    if let Some((namespace, name)) = &options.pod {
        results.push(pod_proxy(client, namespace, name).await);
    }
    results
}

async fn api_server(client: &kube::Client) -> CheckResult {
    match client.apiserver_version().await {
        Ok(info) => CheckResult::pass(API_SERVER, format!("Kubernetes {}", info.git_version)),
        Err(e) => CheckResult::fail(
            API_SERVER,
            e.to_string(),
            "check the current context (kubectl config current-context) and that the cluster is up",
        ),
    }
}

async fn controller(client: &kube::Client, options: &CheckCommand) -> CheckResult {
    let namespace = &options.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let shown = format!("deployment {namespace}/{CONTROLLER_DEPLOYMENT}");
    match deployments.get_opt(CONTROLLER_DEPLOYMENT).await {
        Ok(Some(deployment)) => {
            let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = deployment
                .status
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready > 0 {
                CheckResult::pass(CONTROLLER, format!("{shown}: {ready}/{wanted} ready"))
            } else {
                CheckResult::fail(
                    CONTROLLER,
                    format!("{shown}: 0/{wanted} ready"),
                    format!(
                        "kubectl -n {namespace} describe deployment {CONTROLLER_DEPLOYMENT}; \
                         kubectl -n {namespace} logs deployment/{CONTROLLER_DEPLOYMENT}"
                    ),
                )
            }
        }
        Ok(None) => CheckResult::fail(
            CONTROLLER,
            format!("{shown} not found"),
            format!(
                "helm install {} charts/plexus -n {namespace} --create-namespace \
                 (or pass --namespace where Plexus is installed)",
                options.release
            ),
        ),
        Err(e) => CheckResult::fail(
            CONTROLLER,
            format!("reading {shown}: {e}"),
            "plexusctl check needs `get` on deployments",
        ),
    }
}

async fn pod_proxy(client: &kube::Client, namespace: &str, name: &str) -> CheckResult {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let shown = format!("pod {namespace}/{name}");
    let pod = match pods.get_opt(name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            return CheckResult::fail(
                POD_PROXY,
                format!("{shown} not found"),
                format!("kubectl -n {namespace} get pods"),
            );
        }
        Err(e) => {
            return CheckResult::fail(
                POD_PROXY,
                format!("reading {shown}: {e}"),
                "plexusctl check needs `get` on pods",
            );
        }
    };
    if !carries_proxy(&pod) {
        return CheckResult::fail(
            POD_PROXY,
            format!("{shown} has no {PROXY_CONTAINER} container: not meshed"),
            format!(
                "kubectl annotate namespace {namespace} {INJECT}=enabled, \
                 then recreate the pod"
            ),
        );
    }
    // A native sidecar reports among the init containers.
    let status = pod.status.as_ref().and_then(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find(|c| c.name == PROXY_CONTAINER)
    });
    let logs = format!("kubectl -n {namespace} logs {name} -c {PROXY_CONTAINER}");
    match status {
        // The proxy reports ready only once it holds a certificate and is routing.
        Some(status) if status.ready => CheckResult::pass(
            POD_PROXY,
            format!("{shown}: {PROXY_CONTAINER} ready (certificate issued)"),
        ),
        Some(status) => CheckResult::fail(
            POD_PROXY,
            format!(
                "{shown}: {PROXY_CONTAINER} not ready ({} restarts)",
                status.restart_count
            ),
            format!("{logs} (no certificate yet? check the controller's Identity API)"),
        ),
        None => CheckResult::fail(
            POD_PROXY,
            format!("{shown}: {PROXY_CONTAINER} has not started"),
            format!("kubectl -n {namespace} describe pod {name}"),
        ),
    }
}

/// Whether the injector gave `pod` the proxy (a native sidecar: it is among
/// the init containers).
fn carries_proxy(pod: &Pod) -> bool {
    pod.spec.iter().any(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_must_be_namespace_slash_name() {
        assert_eq!(
            parse_pod("shop/web-1"),
            Ok(("shop".to_owned(), "web-1".to_owned()))
        );
        for bad in ["web-1", "/web", "shop/", "a/b/c"] {
            assert!(parse_pod(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_failure_prints_its_hint_on_the_next_line() {
        let line = CheckResult::fail(WEBHOOK, "not found", "install the chart").to_string();
        assert_eq!(
            line,
            "✘ webhook configured: not found\n    hint: install the chart"
        );
        assert_eq!(
            CheckResult::pass(API_SERVER, "Kubernetes v1.32.0").to_string(),
            "✔ API server reachable: Kubernetes v1.32.0"
        );
    }
}

//! The Helm chart `charts/plexus`, rendered and linted by the real Helm engine.
//!
//! Helm runs through `tests/helm_render.py` on the `helm-python-sdk` package (Helm's Go SDK
//! embedded), with the interpreter from `PLEXUS_PYTHON` (default `target/py/bin/python`;
//! install: `python3 -m venv target/py && target/py/bin/pip install helm-python-sdk`).
//! Every rendered object is parsed into its `k8s-openapi` type and must serialize back to
//! exactly what was rendered, so a misspelt field fails here rather than in a cluster.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plexus_controller::rbac::PERMISSIONS;
use plexus_inject::InjectConfig;
use plexusctl::check::release::{self as chart_names, CLUSTER_SCOPED_NAME_MAX};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::typed;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> String {
    workspace().join("charts/plexus").display().to_string()
}

/// Runs one request through `tests/helm_render.py` and returns its JSON answer.
fn helm(request: Value) -> Value {
    let python = std::env::var_os("PLEXUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/py/bin/python"));
    let script = workspace().join("tests/helm_render.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): create it with `python3 -m venv target/py && \
                 target/py/bin/pip install helm-python-sdk`, or set PLEXUS_PYTHON",
                python.display()
            )
        });
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(request.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helm_render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One rendered release: its objects as JSON (checked to be known, typed kinds) and NOTES.txt.
struct Release {
    objects: Vec<Value>,
    notes: String,
}

fn render(values: Value, namespace: &str) -> Release {
    render_release("plexus", values, namespace)
}

fn render_release(name: &str, values: Value, namespace: &str) -> Release {
    let answer = helm(json!({
        "action": "render", "chart": chart_dir(), "values": values,
        "name": name, "namespace": namespace,
    }));
    assert!(answer.get("error").is_none(), "render failed: {answer}");
    let mut objects = Vec::new();
    let mut notes = String::new();
    for (template, text) in answer["manifests"].as_object().unwrap() {
        let text = text.as_str().unwrap();
        if template.ends_with("NOTES.txt") {
            notes = text.to_string();
            continue;
        }
        for object in typed::documents(template, text) {
            typed::check_typed(template, &object);
            objects.push(object);
        }
    }
    Release { objects, notes }
}

impl Release {
    /// The only object of type `K` named `name`.
    fn get<K: k8s_openapi::Resource + DeserializeOwned>(&self, name: &str) -> K {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == K::KIND && o["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "one {} {name}", K::KIND);
        serde_json::from_value(found[0].clone()).unwrap()
    }

    fn controller(&self) -> (Deployment, Container) {
        let deployment: Deployment = self.get("plexus-controller");
        let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
        assert_eq!(pod.containers.len(), 1);
        (deployment, pod.containers[0].clone())
    }

    fn inject_config(&self) -> InjectConfig {
        let config: ConfigMap = self.get("plexus-config");
        let text = &config.data.unwrap()["inject.yaml"];
        serde_yaml::from_str(text)
            .unwrap_or_else(|e| panic!("inject.yaml is not an InjectConfig: {e}"))
    }
}

fn lint(values: Value) {
    let report = helm(json!({
        "action": "lint", "chart": chart_dir(), "values": values,
        "namespace": "plexus", "kubeVersion": "v1.32.0",
    }));
    assert_eq!(report["errors"], json!([]), "{report}");
    // Severity 2 is a warning, 3 an error; 1 (info, e.g. "icon is recommended") is fine.
    let serious: Vec<&Value> = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
        .collect();
    assert!(serious.is_empty(), "lint: {serious:?}");
}

/// `apiGroup/resource verb` for every verb on every resource the rules grant. Resource
/// names are left out: they narrow a grant, and the controller's list does not carry them.
fn flatten(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    all.insert(format!("{group}/{resource} {verb}"));
                }
            }
        }
    }
    all
}

#[test]
fn default_values_render_lint_clean_and_every_object_is_typed() {
    lint(json!({}));
    let release = render(json!({}), "plexus");
    let kinds: BTreeSet<&str> = release
        .objects
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "MutatingWebhookConfiguration",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    assert!(
        release.notes.contains("plexus.io/inject=enabled"),
        "{}",
        release.notes
    );
    assert!(
        release.notes.contains("Gateway API CRDs"),
        "{}",
        release.notes
    );
}

#[test]
fn the_controller_is_replicated_probed_and_locked_down() {
    let release = render(json!({}), "plexus");
    let (deployment, container) = release.controller();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap()[0]
        .pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector.as_ref().unwrap().match_labels,
        spec.selector.match_labels
    );

    let port = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(
        (port("grpc"), port("webhook"), port("admin")),
        (Some(8090), Some(8443), Some(9990))
    );
    for (probe, path) in [
        (&container.readiness_probe, "/ready"),
        (&container.liveness_probe, "/live"),
        (&container.startup_probe, "/live"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            IntOrString::String("admin".into()),
            "probes on :9990"
        );
    }
    let resources = container.resources.as_ref().unwrap();
    for list in [&resources.requests, &resources.limits] {
        let list = list.as_ref().unwrap();
        assert!(
            list.contains_key("cpu") && list.contains_key("memory"),
            "{list:?}"
        );
    }
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    let pod_sc = pod.security_context.unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_ne!(pod_sc.run_as_user, Some(0));

    let pdb: PodDisruptionBudget = release.get("plexus-controller");
    let pdb = pdb.spec.unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb.selector.unwrap().match_labels,
        spec.selector.match_labels
    );

    for (service, port, target) in [
        ("plexus-controller", 8090, "grpc"),
        ("plexus-injector", 443, "webhook"),
    ] {
        let service: Service = release.get(service);
        let service = service.spec.unwrap();
        assert_eq!(service.selector, spec.selector.match_labels);
        let ports = service.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, port);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String(target.into()))
        );
    }
}

#[test]
fn the_webhook_fails_open_and_skips_the_control_plane_namespace() {
    let release = render(
        json!({"webhook": {"excludedNamespaces": ["legacy"]}}),
        "mesh-system",
    );
    let config: MutatingWebhookConfiguration = release.get("plexus-mesh-system-injector");
    let webhooks = config.webhooks.unwrap();
    assert_eq!(webhooks.len(), 1);
    let hook = &webhooks[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.timeout_seconds, Some(5));
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("Never"));
    assert!(
        hook.client_config.ca_bundle.is_none(),
        "the controller owns caBundle"
    );
    let service = hook.client_config.service.as_ref().unwrap();
    assert_eq!(
        (service.name.as_str(), service.namespace.as_str()),
        ("plexus-injector", "mesh-system")
    );
    let rules = hook.rules.as_ref().unwrap();
    assert_eq!(rules[0].resources, Some(vec!["pods".to_string()]));
    assert_eq!(rules[0].operations, Some(vec!["CREATE".to_string()]));
    let excluded = &hook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(excluded.key, "kubernetes.io/metadata.name");
    assert_eq!(excluded.operator, "NotIn");
    let values = excluded.values.clone().unwrap();
    for ns in ["mesh-system", "kube-system", "legacy"] {
        assert!(
            values.contains(&ns.to_string()),
            "{ns} not excluded: {values:?}"
        );
    }
}

#[test]
fn rbac_is_exactly_what_the_controller_uses() {
    let release = render(json!({}), "plexus");
    let cluster_role: ClusterRole = release.get("plexus-plexus-controller");
    let role: Role = release.get("plexus-controller");
    let cluster_wide = flatten(cluster_role.rules.as_deref().unwrap_or_default());
    let in_namespace = flatten(role.rules.as_deref().unwrap_or_default());
    let granted: BTreeSet<String> = cluster_wide.union(&in_namespace).cloned().collect();
    let used: BTreeSet<String> = PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(move |verb| format!("{}/{} {verb}", p.api_group, p.resource))
        })
        .collect();
    assert_eq!(
        granted, used,
        "chart RBAC != plexus_controller::rbac::PERMISSIONS"
    );
    // Least privilege: the CA Secret and the Lease in the control plane's namespace only.
    let namespaced =
        |g: &String| g.starts_with("/secrets ") || g.starts_with("coordination.k8s.io/leases ");
    assert!(!cluster_wide.iter().any(namespaced), "{cluster_wide:?}");
    assert!(in_namespace.iter().all(namespaced), "{in_namespace:?}");
    // The webhook configuration: only the release's own.
    let webhook_rule = cluster_role
        .rules
        .iter()
        .flatten()
        .find(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|r| r == "mutatingwebhookconfigurations")
        })
        .unwrap();
    assert_eq!(
        webhook_rule.resource_names.as_deref(),
        Some(&["plexus-plexus-injector".to_string()][..])
    );
    assert_eq!(role.metadata.namespace.as_deref(), Some("plexus"));

    let account: ServiceAccount = release.get("plexus-controller");
    let (deployment, _) = release.controller();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
    let cluster_binding: ClusterRoleBinding = release.get("plexus-plexus-controller");
    let binding: RoleBinding = release.get("plexus-controller");
    for (role_ref, subjects, role) in [
        (
            &cluster_binding.role_ref,
            &cluster_binding.subjects,
            "plexus-plexus-controller",
        ),
        (&binding.role_ref, &binding.subjects, "plexus-controller"),
    ] {
        assert_eq!(role_ref.name, role);
        let subject = &subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "plexus-controller")
        );
        assert_eq!(subject.namespace.as_deref(), Some("plexus"));
    }
}

/// The value of the controller container's environment variable `name`.
fn controller_env(release: &Release, name: &str) -> Option<String> {
    let (_, container) = release.controller();
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn two_installs_have_distinct_cluster_scoped_names_and_each_controller_patches_its_own() {
    let kinds = [
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    ];
    let cluster_scoped = |release: &Release| -> BTreeSet<String> {
        release
            .objects
            .iter()
            .filter(|o| kinds.iter().any(|k| o["kind"] == *k))
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect()
    };
    // Both releases are named `plexus`, as `helm install plexus` in each namespace would.
    let (a, b) = (render(json!({}), "team-a"), render(json!({}), "team-b"));
    let (names_a, names_b) = (cluster_scoped(&a), cluster_scoped(&b));
    assert_eq!(names_a.len(), 3, "{names_a:?}");
    assert!(names_a.is_disjoint(&names_b), "{names_a:?} / {names_b:?}");
    for (release, namespace) in [(&a, "team-a"), (&b, "team-b")] {
        let own = format!("plexus-{namespace}-injector");
        assert_eq!(chart_names::webhook_configuration("plexus", namespace), own);
        let _: MutatingWebhookConfiguration = release.get(&own);
        assert_eq!(
            controller_env(release, "PLEXUS_WEBHOOK_CONFIGURATION"),
            Some(own)
        );
        let binding: ClusterRoleBinding = release.get(&format!("plexus-{namespace}-controller"));
        assert_eq!(
            binding.role_ref.name,
            format!("plexus-{namespace}-controller")
        );
    }
    let other = render_release("mesh", json!({}), "team-a");
    assert!(cluster_scoped(&other).is_disjoint(&names_a));
}

#[test]
fn plexusctl_derives_the_webhook_configuration_name_as_the_chart_does() {
    let (long_release, long_namespace) = ("r".repeat(150), "n".repeat(63));
    // The cut lands on the `-` between release and namespace, which goes too.
    let cut_at_dash = "r".repeat(CLUSTER_SCOPED_NAME_MAX - 1);
    for (name, namespace) in [
        ("plexus", "plexus"),
        ("mesh", "team-a"),
        (long_release.as_str(), long_namespace.as_str()),
        (cut_at_dash.as_str(), "ns"),
    ] {
        let rendered = render_release(name, json!({}), namespace);
        let configurations: Vec<&Value> = rendered
            .objects
            .iter()
            .filter(|o| o["kind"] == "MutatingWebhookConfiguration")
            .collect();
        assert_eq!(configurations.len(), 1);
        let derived = chart_names::webhook_configuration(name, namespace);
        assert_eq!(configurations[0]["metadata"]["name"], derived.as_str());
        assert_eq!(
            controller_env(&rendered, "PLEXUS_WEBHOOK_CONFIGURATION"),
            Some(derived)
        );
    }
}

#[test]
fn the_controller_gets_the_cluster_domain_and_its_pod_name() {
    let release = render(json!({"clusterDomain": "corp.internal"}), "plexus");
    assert_eq!(
        controller_env(&release, "PLEXUS_CLUSTER_DOMAIN").as_deref(),
        Some("corp.internal")
    );
    let (_, container) = release.controller();
    let pod_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(
        pod_name.as_deref(),
        Some("metadata.name"),
        "the Lease holder identity"
    );
    assert_eq!(
        release.inject_config().controller_addr,
        "plexus-controller.plexus.svc.corp.internal:8090"
    );
}

#[test]
fn the_mesh_config_is_the_injector_config_with_values_applied() {
    let defaults = render(json!({}), "plexus").inject_config();
    assert_eq!(
        defaults,
        InjectConfig::default(),
        "chart defaults = injector defaults"
    );

    let values = json!({
        "trustDomain": "prod.example.com",
        "proxy": {
            "image": {"repository": "registry.example.com/plexus/proxy", "tag": "1.2.3", "pullPolicy": "Always"},
            "traceSampling": 0.2,
            "logLevel": "plexus_proxy=debug,info",
            "resources": {"cpuLimit": "1", "memoryLimit": "256Mi"},
            "skipOutboundPorts": "5432",
            "skipOutboundCidrs": "169.254.169.254/32",
        },
        "tracing": {"otlpEndpoint": "http://otel-collector.observability.svc.cluster.local:4317"},
    });
    lint(values.clone());
    let release = render(values, "mesh");
    let config = release.inject_config();
    assert_eq!(
        config.proxy_image,
        "registry.example.com/plexus/proxy:1.2.3"
    );
    assert_eq!(config.image_pull_policy, "Always");
    assert_eq!(
        config.controller_addr,
        "plexus-controller.mesh.svc.cluster.local:8090"
    );
    assert_eq!(config.trust_domain, "prod.example.com");
    assert_eq!(
        config.controller_identity,
        "spiffe://prod.example.com/ns/mesh/sa/plexus-controller"
    );
    assert_eq!(config.trace_sampling, 0.2);
    assert_eq!(config.log_level, "plexus_proxy=debug,info");
    assert_eq!(config.proxy_resources.cpu_limit, "1");
    assert_eq!(config.proxy_resources.memory_limit, "256Mi");
    assert_eq!(
        config.proxy_resources.cpu_request, "50m",
        "unset keys keep defaults"
    );
    assert_eq!(config.skip_outbound_ports, "5432");
    assert_eq!(config.skip_outbound_cidrs, "169.254.169.254/32");
    assert_eq!(
        config.otlp_endpoint,
        "http://otel-collector.observability.svc.cluster.local:4317"
    );

    let (_, container) = release.controller();
    let env = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env("PLEXUS_OTLP_ENDPOINT"),
        Some(config.otlp_endpoint.clone())
    );
    assert_eq!(
        env("PLEXUS_TRUST_DOMAIN").as_deref(),
        Some("prod.example.com")
    );
    assert!(release.notes.contains(&config.otlp_endpoint));
}

#[test]
fn non_default_scheduling_values_render() {
    let values = json!({
        "controller": {
            "replicas": 3,
            "antiAffinity": "hard",
            "image": {"repository": "plexus/controller", "tag": "dev", "pullPolicy": "Never"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "podDisruptionBudget": {"minAvailable": 2},
        },
    });
    lint(values.clone());
    let release = render(values, "plexus");
    let (deployment, container) = release.controller();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(container.image.as_deref(), Some("plexus/controller:dev"));
    let pod = spec.template.spec.unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    assert!(
        anti.preferred_during_scheduling_ignored_during_execution
            .is_none()
    );
    assert_eq!(
        anti.required_during_scheduling_ignored_during_execution
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    assert_eq!(
        pod.tolerations.unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
    let pdb: PodDisruptionBudget = release.get("plexus-controller");
    assert_eq!(pdb.spec.unwrap().min_available, Some(IntOrString::Int(2)));
}

#[test]
fn the_schema_rejects_values_that_would_break_pods() {
    let valid = helm(json!({"action": "validate", "chart": chart_dir(), "values": {}}));
    assert_eq!(valid["valid"], true, "{valid}");
    for (values, key) in [
        (json!({"proxy": {"traceSampling": 3}}), "traceSampling"),
        (
            json!({"proxy": {"skipInboundPorts": "22,ssh"}}),
            "skipInboundPorts",
        ),
        (
            json!({"proxy": {"resources": {"memoryLimit": "lots"}}}),
            "memoryLimit",
        ),
        (
            json!({"controller": {"antiAffinity": "maybe"}}),
            "antiAffinity",
        ),
        (json!({"webhook": {"timeoutSeconds": 60}}), "timeoutSeconds"),
        (
            json!({"tracing": {"otlpEndpoint": "collector:4317"}}),
            "otlpEndpoint",
        ),
        (json!({"controler": {}}), "controler"),
    ] {
        let answer = helm(json!({"action": "validate", "chart": chart_dir(), "values": values}));
        assert_eq!(answer["valid"], false, "{values} was accepted");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(key),
            "{values}: error does not name {key}: {error}"
        );
    }
}

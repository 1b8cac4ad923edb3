//! `manifests/`: every object parses into its Kubernetes type, and the demo is wired as the
//! README says (meshed namespace, the 80/20 route with retries and timeouts, traces to Jaeger).

use std::path::Path;

use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::typed;

fn load(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let objects = typed::documents(file, &text);
    for object in &objects {
        typed::check_typed(file, object);
    }
    objects
}

fn all<K: k8s_openapi::Resource + DeserializeOwned>(objects: &[Value]) -> Vec<K> {
    objects
        .iter()
        .filter(|o| o["kind"] == K::KIND)
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect()
}

#[test]
fn every_manifest_is_typed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "demo.yaml",
            "namespace.yaml",
            "observability.yaml",
            "routes.yaml"
        ]
    );
    for file in files {
        assert!(!load(&file).is_empty(), "{file} is empty");
    }
}

#[test]
fn the_demo_namespace_is_meshed_and_its_services_select_pods() {
    let namespaces: Vec<Namespace> = all(&load("namespace.yaml"));
    let annotations = namespaces[0]
        .metadata
        .annotations
        .clone()
        .unwrap_or_default();
    assert_eq!(
        annotations.get("plexus.io/inject").map(String::as_str),
        Some("enabled")
    );

    let demo = load("demo.yaml");
    let deployments: Vec<Deployment> = all(&demo);
    let services: Vec<Service> = all(&demo);
    for service in &services {
        let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
        let selected = deployments.iter().filter(|d| {
            let labels = d
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        assert!(
            selected.count() > 0,
            "Service {:?} selects no pod",
            service.metadata.name
        );
    }
    let flaky: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| {
            let args = d
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .args
                .clone();
            args.unwrap_or_default()
                .iter()
                .any(|a| a.starts_with("--fail-rate="))
        })
        .collect();
    assert_eq!(flaky.len(), 1, "one flaky backend replica");
    assert_eq!(flaky[0].spec.as_ref().unwrap().replicas, Some(1));
}

#[test]
fn the_backend_route_splits_80_20_with_retries_and_timeouts() {
    let routes: Vec<HttpRoute> = load("routes.yaml")
        .into_iter()
        .map(|o| serde_json::from_value(o).unwrap())
        .collect();
    assert_eq!(routes.len(), 1);
    let spec = &routes[0].spec;
    let parent = &spec.parent_refs.as_ref().unwrap()[0];
    assert_eq!(
        (parent.kind.as_deref(), parent.name.as_str()),
        (Some("Service"), "backend")
    );
    let rule = &spec.rules.as_ref().unwrap()[0];
    let split: Vec<(String, Option<i32>)> = rule
        .backend_refs
        .iter()
        .flatten()
        .map(|b| (b.name.clone(), b.weight))
        .collect();
    assert_eq!(
        split,
        [
            ("backend-v1".to_string(), Some(80)),
            ("backend-v2".to_string(), Some(20))
        ]
    );
    let timeouts = rule.timeouts.as_ref().unwrap();
    assert_eq!(
        (
            timeouts.request.as_deref(),
            timeouts.backend_request.as_deref()
        ),
        (Some("3s"), Some("1s"))
    );
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, Some(2));
    assert_eq!(retry.codes.as_deref(), Some(&[500, 502, 503, 504][..]));
}

#[test]
fn the_collector_receives_otlp_and_exports_to_jaeger() {
    let objects = load("observability.yaml");
    let config: Vec<ConfigMap> = all(&objects);
    let text = &config[0].data.as_ref().unwrap()["config.yaml"];
    let collector: Value = serde_yaml::from_str(text).unwrap();
    assert_eq!(
        collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    let pipeline = &collector["service"]["pipelines"]["traces"];
    assert!(
        pipeline["exporters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "otlp/jaeger")
    );
    let jaeger_endpoint = collector["exporters"]["otlp/jaeger"]["endpoint"]
        .as_str()
        .unwrap();

    let services: Vec<Service> = all(&objects);
    let port = |name: &str, port_name: &str| {
        services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| {
                s.spec
                    .as_ref()?
                    .ports
                    .as_ref()?
                    .iter()
                    .find(|p| p.name.as_deref() == Some(port_name))
            })
            .map(|p| p.port)
    };
    assert_eq!(port("otel-collector", "otlp-grpc"), Some(4317));
    assert_eq!(port("jaeger", "otlp-grpc"), Some(4317));
    assert_eq!(port("jaeger", "ui"), Some(16686));
    assert_eq!(
        jaeger_endpoint,
        "jaeger.observability.svc.cluster.local:4317"
    );
}

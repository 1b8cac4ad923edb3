//! Kubernetes YAML parsed into typed objects, for the chart and manifest tests.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Every document of a multi-document YAML text, empty ones dropped.
pub fn documents(origin: &str, text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"))
        })
        .filter(|value: &Value| !value.is_null())
        .collect()
}

/// Parses `object` into the k8s-openapi or gateway-api type its apiVersion/kind names and
/// checks that it serializes back unchanged: a field the type does not know (a typo) fails.
/// Kinds outside the list fail too.
pub fn check_typed(origin: &str, object: &Value) {
    use gateway_api::experimental::httproutes::HttpRoute;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let check = match (api_version, kind) {
        ("apps/v1", "Deployment") => round_trip::<Deployment>,
        ("v1", "Service") => round_trip::<Service>,
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>,
        ("v1", "ConfigMap") => round_trip::<ConfigMap>,
        ("v1", "Namespace") => round_trip::<Namespace>,
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => round_trip::<ClusterRoleBinding>,
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>,
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<MutatingWebhookConfiguration>
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => round_trip::<HttpRoute>,
        _ => panic!("{origin}: unexpected kind {api_version}/{kind}"),
    };
    check(origin, object);
}

fn round_trip<K: DeserializeOwned + Serialize>(origin: &str, object: &Value) {
    let typed: K =
        serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if &back != object {
        panic!(
            "{origin}: {} {}: fields the type does not know were dropped or changed:\n{}",
            object["kind"],
            object["metadata"]["name"],
            differences(object, &back, "").join("\n")
        );
    }
}

/// Paths where `a` and `b` differ, for a readable failure.
fn differences(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let null = Value::Null;
                    differences(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &format!("{at}/{k}"),
                    )
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| differences(p, q, &format!("{at}/{i}")))
            .collect(),
        _ if a == b => Vec::new(),
        _ => vec![format!("  {at}: rendered {a}, typed {b}")],
    }
}

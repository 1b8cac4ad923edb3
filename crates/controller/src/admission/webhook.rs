//! The mutating admission webhook: AdmissionReview in, AdmissionReview (with a JSON Patch) out.
//!
//! It fails open: anything it cannot read or does not handle is allowed unchanged with a
//! warning, because a mesh must never stop a cluster from creating pods.

use json_patch::jsonptr::Pointer;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use plexus_core::annotations::INJECT;
use plexus_inject::{InjectConfig, plan};

/// Namespace annotations, which the webhook needs but an AdmissionReview does not carry.
/// The controller answers from its watch of namespaces.
pub trait NamespaceAnnotations {
    /// The value of annotation `key` on `namespace`, if the namespace is known and has it.
    fn annotation(&self, namespace: &str, key: &str) -> Option<String>;
}

/// Answers one admission request: `body` is what the API server POSTed, the result is the
/// JSON AdmissionReview to send back with status 200. It denies nothing.
pub fn review(
    body: &[u8],
    namespaces: &dyn NamespaceAnnotations,
    config: &InjectConfig,
) -> Vec<u8> {
    let parsed = serde_json::from_slice::<AdmissionReview<DynamicObject>>(body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let request: Result<AdmissionRequest<DynamicObject>, _> = r.try_into();
            request.map_err(|_| "it has no request".to_string())
        });
    let response = match parsed {
        Ok(request) => respond(&request, namespaces, config),
        Err(e) => unreadable(&format!("not an AdmissionReview: {e}")),
    };
    encode(response.into_review())
}

/// The review as JSON, with the patch base64-encoded as the API server requires (kube's
/// type serializes the bytes as a number array: kube-rs issue 1781).
fn encode(review: AdmissionReview<DynamicObject>) -> Vec<u8> {
    let mut json = serde_json::to_value(&review).unwrap_or_default();
    if let Some(patch) = json.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).unwrap_or_default();
        *patch = serde_json::to_value(ByteString(bytes)).unwrap_or_default();
    }
    serde_json::to_vec(&json).unwrap_or_default()
}

fn respond(
    request: &AdmissionRequest<DynamicObject>,
    namespaces: &dyn NamespaceAnnotations,
    config: &InjectConfig,
) -> AdmissionResponse {
    let allow = AdmissionResponse::from(request);
    let kind = &request.kind;
    if (kind.group.as_str(), kind.kind.as_str()) != ("", "Pod") {
        return warn(
            allow,
            format!(
                "plexus: not injecting a {}/{}: only Pods",
                kind.group, kind.kind
            ),
        );
    }
    if request.operation != Operation::Create {
        return allow;
    }
    let Some(object) = &request.object else {
        return warn(
            allow,
            "plexus: not injecting: the request has no object".to_string(),
        );
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => return warn(allow, format!("plexus: not injecting: unreadable Pod: {e}")),
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let on_pod = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT));
    let enabled = match on_pod.map(String::as_str) {
        Some("enabled") => true,
        Some(_) => false,
        None => namespaces.annotation(&namespace, INJECT).as_deref() == Some("enabled"),
    };
    let Some(spec) = pod.spec.as_ref().filter(|_| enabled) else {
        return allow;
    };
    let injection = match plan(&pod.metadata, spec, config) {
        Ok(injection) => injection,
        Err(skip) => {
            tracing::debug!(%namespace, pod = request.name, %skip, "not injecting");
            return allow;
        }
    };
    let warnings = injection.warnings.clone();
    match allow
        .clone()
        .with_patch(injection.patch(Pointer::root(), spec))
    {
        Ok(patched) => {
            tracing::info!(%namespace, pod = request.name, "injecting the proxy");
            if warnings.is_empty() {
                patched
            } else {
                warnings.into_iter().fold(patched, warn)
            }
        }
        Err(e) => warn(allow, format!("plexus: not injecting: {e}")),
    }
}

fn warn(mut response: AdmissionResponse, warning: String) -> AdmissionResponse {
    tracing::warn!(uid = response.uid, "{warning}");
    response.warnings.get_or_insert_with(Vec::new).push(warning);
    response
}

/// An allowing response to a body we could not read at all (so there is no request uid).
fn unreadable(why: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(why);
    response.allowed = true;
    response.result = Default::default();
    warn(response, format!("plexus: {why}"))
}

/// Properties of the webhook, which reads whatever the API server (or
/// anyone who reaches the port) sends: every body gets a well-formed
/// allowing AdmissionReview, and a patch always applies to the pod it was
/// made for.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Namespaces with injection enabled or not.
    struct Namespaces(bool);

    impl NamespaceAnnotations for Namespaces {
        fn annotation(&self, _: &str, key: &str) -> Option<String> {
            (self.0 && key == INJECT).then(|| "enabled".to_owned())
        }
    }

    /// Any JSON value.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn container() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just("plexus-proxy".to_owned()), "[a-z]{1,8}"],
            prop::collection::vec(prop_oneof![any::<i32>(), 1..65536i32], 0..3),
            prop::option::of(any_json()),
        )
            .prop_map(|(name, ports, extra)| {
                let ports: Vec<Value> = ports
                    .into_iter()
                    .map(|p| json!({ "containerPort": p }))
                    .collect();
                let mut container = json!({ "name": name, "image": "app", "ports": ports });
                if let Some(extra) = extra {
                    container["securityContext"] = extra;
                }
                container
            })
    }

    /// Pod annotations: every one the injector reads, with any value.
    fn annotations() -> impl Strategy<Value = Value> {
        let value = prop_oneof!["\\PC{0,16}", "[0-9,. -]{0,12}", Just("enabled".to_owned())];
        prop::collection::btree_map(
            prop::sample::select(plexus_inject::ANNOTATIONS_READ),
            value,
            0..6,
        )
        .prop_map(|m| json!(m))
    }

    fn pod() -> impl Strategy<Value = Value> {
        (
            annotations(),
            prop::collection::vec(container(), 0..3),
            prop::option::of(prop::collection::vec(container(), 0..2)),
            prop::option::of(any::<bool>()),
            prop::option::of(any_json()),
        )
            .prop_map(|(annotations, containers, init, host_network, volumes)| {
                let mut spec = json!({ "containers": containers });
                if let Some(init) = init {
                    spec["initContainers"] = json!(init);
                }
                if let Some(host_network) = host_network {
                    spec["hostNetwork"] = json!(host_network);
                }
                if let Some(volumes) = volumes {
                    spec["volumes"] = volumes;
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": { "name": "web", "annotations": annotations },
                    "spec": spec,
                })
            })
    }

    /// An AdmissionReview with a random pod, kind and operation.
    fn review_of_a_pod() -> impl Strategy<Value = (Value, Value)> {
        (
            pod(),
            prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT"]),
            prop::sample::select(vec!["Pod", "Deployment"]),
            "[a-f0-9-]{1,36}",
        )
            .prop_map(|(pod, operation, kind, uid)| {
                let review = json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {
                        "uid": uid,
                        "kind": { "group": "", "version": "v1", "kind": kind },
                        "resource": { "group": "", "version": "v1", "resource": "pods" },
                        "operation": operation,
                        "namespace": "shop",
                        "userInfo": {},
                        "object": pod,
                    },
                });
                (review, pod)
            })
    }

    /// The answer is an allowing AdmissionReview; its patch, if any, is a
    /// JSON Patch that applies to `pod` and leaves a Pod with the proxy.
    fn check_answer(
        answer: &[u8],
        uid: Option<&str>,
        pod: Option<&Value>,
    ) -> Result<(), TestCaseError> {
        let answer: Value = serde_json::from_slice(answer).expect("the answer is JSON");
        prop_assert_eq!(&answer["apiVersion"], "admission.k8s.io/v1");
        prop_assert_eq!(&answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        prop_assert_eq!(&response["allowed"], true, "{}", answer);
        if let Some(uid) = uid {
            prop_assert_eq!(&response["uid"], uid);
        }
        let Some(patch) = response.get("patch").filter(|p| !p.is_null()) else {
            return Ok(());
        };
        prop_assert_eq!(&response["patchType"], "JSONPatch");
        let bytes: ByteString = serde_json::from_value(patch.clone()).expect("a base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).expect("a JSON Patch");
        let mut patched = pod.cloned().expect("a patch only for a pod");
        json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod");
        let patched: Pod = serde_json::from_value(patched).expect("the patched pod is a Pod");
        let spec = patched.spec.unwrap_or_default();
        let proxies = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.name == "plexus-proxy")
            .count();
        prop_assert_eq!(proxies, 1);
        Ok(())
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_body_gets_an_allowing_review(body in prop::collection::vec(any::<u8>(), 0..128)) {
            check_answer(&review(&body, &Namespaces(true), &InjectConfig::default()), None, None)?;
        }

        #[test]
        fn any_json_gets_an_allowing_review(value in any_json(), inject in any::<bool>()) {
            let answer = review(&serde_json::to_vec(&value).unwrap(), &Namespaces(inject), &InjectConfig::default());
            check_answer(&answer, None, None)?;
        }

        #[test]
        fn any_pod_gets_an_allowing_review_and_a_patch_that_applies(
            (review_json, pod) in review_of_a_pod(),
            inject in any::<bool>(),
        ) {
            let body = serde_json::to_vec(&review_json).unwrap();
            let answer = review(&body, &Namespaces(inject), &InjectConfig::default());
            let uid = review_json["request"]["uid"].as_str();
            check_answer(&answer, uid, Some(&pod))?;
        }
    }
}

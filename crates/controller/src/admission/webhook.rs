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

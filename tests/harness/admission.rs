//! Mutating admission as the API server does it, for the stand-in
//! ([`crate::apiserver`]): on a create, each webhook of the stored
//! MutatingWebhookConfigurations (configurations in name order) whose rules,
//! `namespaceSelector` and `objectSelector` match is POSTed an
//! AdmissionReview over HTTPS verified with its `caBundle` alone (server name
//! `<service>.<namespace>.svc` for a Service, the host of a `url`), within its
//! `timeoutSeconds`, and its JSON Patch is applied before the next one. A
//! failed call is skipped under `failurePolicy: Ignore` and fails the create
//! otherwise (`500`, "failed calling webhook"); a denial fails it with the
//! webhook's message. Only loopback is dialled: a Service is reached at the
//! address the test routed it to, and a `url` must name a loopback IP.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use k8s_openapi::ByteString;
use serde_json::{Value, json};

use crate::http::https_exchange;

/// `(namespace, name, port)` of a Service -> the loopback address it reaches.
pub type ServiceRoutes = HashMap<(String, String, u16), SocketAddr>;

/// The create being admitted.
pub struct Create<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub namespace: &'a str,
    pub dry_run: bool,
}

/// Why the API server refuses the create.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// `Reason: message`, as `apiserver::failure` takes it.
    pub reason: String,
}

/// `object` after every matching webhook of `configurations` mutated it.
/// `namespace_labels` are the labels of the object's namespace.
pub async fn mutate(
    mut configurations: Vec<Value>,
    routes: &ServiceRoutes,
    create: &Create<'_>,
    namespace_labels: &BTreeMap<String, String>,
    mut object: Value,
) -> Result<Value, Refusal> {
    configurations.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let webhooks: Vec<Value> = configurations
        .iter()
        .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
        .collect();
    for webhook in webhooks {
        let object_labels = labels_of(&object["metadata"]["labels"]);
        if !matches_rules(&webhook["rules"], create)
            || !selects(&webhook["namespaceSelector"], namespace_labels)
            || !selects(&webhook["objectSelector"], &object_labels)
        {
            continue;
        }
        let name = webhook["name"].as_str().unwrap_or_default().to_string();
        match call(&webhook, routes, create, &object).await {
            Ok(Verdict::Allowed(Some(patch))) => {
                if let Err(e) = json_patch::patch(&mut object, &patch) {
                    return Err(internal(format!(
                        "failed calling webhook {name:?}: the JSON patch does not apply: {e}"
                    )));
                }
            }
            Ok(Verdict::Allowed(None)) => {}
            Ok(Verdict::Denied(message)) => {
                return Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    reason: format!(
                        "BadRequest: admission webhook {name:?} denied the request: {message}"
                    ),
                });
            }
            Err(e) if webhook["failurePolicy"] == "Ignore" => {
                // The real API server logs this and admits the object unchanged.
                eprintln!("stand-in API server: failed calling webhook {name:?}: {e}; ignored");
            }
            Err(e) => return Err(internal(format!("failed calling webhook {name:?}: {e}"))),
        }
    }
    Ok(object)
}

enum Verdict {
    Allowed(Option<json_patch::Patch>),
    Denied(String),
}

fn internal(message: String) -> Refusal {
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reason: format!("InternalError: Internal error occurred: {message}"),
    }
}

/// One call of `webhook` about `object`, and what it answered.
async fn call(
    webhook: &Value,
    routes: &ServiceRoutes,
    create: &Create<'_>,
    object: &Value,
) -> Result<Verdict, String> {
    let client = &webhook["clientConfig"];
    let Target {
        addr,
        server_name,
        port,
        path,
    } = target(client, routes)?;
    let timeout = webhook["timeoutSeconds"].as_u64().unwrap_or(10);
    let url = format!("https://{server_name}:{port}{path}?timeout={timeout}s");
    let bundle: ByteString = serde_json::from_value(client["caBundle"].clone()).map_err(|_| {
        format!("Post {url:?}: x509: certificate signed by unknown authority (no caBundle)")
    })?;
    let uid = format!("stand-in-{:016x}", rand::random::<u64>());
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": create.group, "version": create.version, "kind": object["kind"]},
            "resource": {"group": create.group, "version": create.version, "resource": create.resource},
            "requestKind": {"group": create.group, "version": create.version, "kind": object["kind"]},
            "requestResource": {"group": create.group, "version": create.version, "resource": create.resource},
            "name": object["metadata"]["name"],
            "namespace": create.namespace,
            "operation": "CREATE",
            "userInfo": {"username": "stand-in", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": create.dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    });
    let request = http::Request::post(&url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .map_err(|e| e.to_string())?;
    let exchange = https_exchange(&bundle.0, addr, &server_name, request);
    let (status, body) = tokio::time::timeout(Duration::from_secs(timeout), exchange)
        .await
        .map_err(|_| format!("Post {url:?}: context deadline exceeded"))?
        .map_err(|e| format!("Post {url:?}: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!("Post {url:?}: status {status}"));
    }
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("the response is not JSON: {e}"))?;
    let response = &answer["response"];
    if response["uid"] != uid.as_str() {
        return Err(format!(
            "expected response.uid {uid:?}, got {}",
            response["uid"]
        ));
    }
    if response["allowed"] != true {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        return Ok(Verdict::Denied(message.to_string()));
    }
    if response["patch"].is_null() {
        return Ok(Verdict::Allowed(None));
    }
    if response["patchType"] != "JSONPatch" {
        return Err(format!("unsupported patchType {}", response["patchType"]));
    }
    let ByteString(patch) = serde_json::from_value(response["patch"].clone())
        .map_err(|e| format!("response.patch is not base64: {e}"))?;
    let patch = serde_json::from_slice(&patch)
        .map_err(|e| format!("response.patch is not a JSON Patch: {e}"))?;
    Ok(Verdict::Allowed(Some(patch)))
}

/// Where a `clientConfig` is called.
struct Target {
    /// The loopback address dialled.
    addr: SocketAddr,
    /// The name the certificate must have: the Service's DNS name or the URL's host.
    server_name: String,
    /// The port as the configuration names it (a Service's port, not its endpoint's).
    port: u16,
    path: String,
}

fn target(client: &Value, routes: &ServiceRoutes) -> Result<Target, String> {
    if let Some(url) = client["url"].as_str() {
        let uri: http::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("url {url:?}: webhooks are called over https only"));
        }
        let host = uri.host().unwrap_or_default();
        let ip: IpAddr = host
            .trim_matches(['[', ']'])
            .parse()
            .ok()
            .filter(IpAddr::is_loopback)
            .ok_or_else(|| format!("url {url:?}: the stand-in dials loopback IPs only"))?;
        let port = uri.port_u16().unwrap_or(443);
        return Ok(Target {
            addr: SocketAddr::new(ip, port),
            server_name: host.to_string(),
            port,
            path: uri.path().to_string(),
        });
    }
    let service = &client["service"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (namespace, name) = (text(&service["namespace"]), text(&service["name"]));
    let port = service["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(443);
    let addr = routes
        .get(&(namespace.clone(), name.clone(), port))
        .copied()
        .ok_or_else(|| format!("service \"{name}\" not found or has no endpoints"))?;
    Ok(Target {
        addr,
        server_name: format!("{name}.{namespace}.svc"),
        port,
        path: service["path"].as_str().unwrap_or("/").to_string(),
    })
}

/// Whether one of `rules` covers this create (`*` matches anything).
fn matches_rules(rules: &Value, create: &Create<'_>) -> bool {
    let has = |list: &Value, wanted: &str| {
        list.as_array()
            .is_some_and(|items| items.iter().any(|i| i == "*" || i == wanted))
    };
    rules.as_array().into_iter().flatten().any(|rule| {
        has(&rule["operations"], "CREATE")
            && has(&rule["apiGroups"], create.group)
            && has(&rule["apiVersions"], create.version)
            && has(&rule["resources"], create.resource)
    })
}

/// A label selector (absent: everything) against `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| labels.get(key).map(String::as_str) == value.as_str());
    let by_expression = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|expression| {
            let value = expression["key"].as_str().and_then(|key| labels.get(key));
            let listed = |v: &String| {
                expression["values"]
                    .as_array()
                    .is_some_and(|values| values.iter().any(|x| x == v.as_str()))
            };
            match expression["operator"].as_str() {
                Some("In") => value.is_some_and(listed),
                Some("NotIn") => !value.is_some_and(listed),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        });
    by_label && by_expression
}

/// `metadata.labels` as a map (absent: none).
pub fn labels_of(labels: &Value) -> BTreeMap<String, String> {
    labels
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

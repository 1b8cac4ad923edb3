//! An in-process stand-in for the Kubernetes API server's list/watch HTTP
//! protocol, for testing clients built on kube-rs against something that
//! behaves like the real thing: JSON lists carrying a `resourceVersion`,
//! `?watch=true` streams of ADDED / MODIFIED / DELETED / BOOKMARK lines
//! replayed from the version asked, `410 Gone` (an ERROR event) when that
//! version was compacted away, and watch connections the test can drop.
//!
//! Collections are addressed by their URL path, e.g. `/api/v1/services` or
//! `/apis/discovery.k8s.io/v1/endpointslices` (cluster-wide lists only).
//! Single objects are created (`POST` to the namespace's collection, 409
//! `AlreadyExists` if present, a `generateName` completed; first through the
//! webhooks of the stored MutatingWebhookConfigurations, as
//! [`crate::admission`] says; `dryRun=All` answers and stores nothing), read
//! (`GET`) and patched (`PATCH`: JSON Patch, merge or strategic merge patch,
//! or server-side apply, which answers 409 `Conflict` when it would change a
//! field another field manager set) at their own URLs
//! (`/api/v1/namespaces/shop/pods/web`, or
//! `/apis/<group>/<version>/<resource>/<name>` when cluster-scoped); lists and
//! watches honour a `metadata.name` field selector, and `/version` answers
//! like a Kubernetes 1.32 API server. Used by the
//! controller's feed and injector tests and by `plexusctl check`'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::admission::{Create, Refusal, ServiceRoutes, labels_of, mutate};

type WatchSender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// An open watch, and the one object name it selected, if any.
struct Watcher {
    tx: WatchSender,
    only: Option<String>,
}

#[derive(Default)]
struct Collection {
    /// (namespace, name) -> object, with its current resourceVersion.
    objects: BTreeMap<(String, String), Value>,
    /// Every event since `compacted`: (resourceVersion, type, object).
    log: Vec<(u64, &'static str, Value)>,
    /// Watches from a version at or below this get `410 Gone`.
    compacted: u64,
    watchers: Vec<Watcher>,
    lists: usize,
    watches: usize,
    /// Bodies of the status patches received, in order.
    status_patches: Vec<Value>,
    /// Bodies of the JSON Patches applied to objects, in order.
    object_patches: Vec<Value>,
    /// Per object: field path -> the field manager that last set it.
    owners: HashMap<(String, String), HashMap<String, String>>,
}

#[derive(Default)]
struct State {
    version: u64,
    collections: HashMap<String, Collection>,
    /// Collections answered `404 NotFound`, as for a kind whose CRD is not
    /// installed.
    unserved: HashSet<String>,
}

/// A running stand-in; dropped with the test's runtime.
#[derive(Clone)]
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Where webhooks' Services are reached ([`ApiServer::route_service`]).
    services: Arc<Mutex<ServiceRoutes>>,
}

const WEBHOOK_CONFIGURATIONS: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const NAMESPACES: &str = "/api/v1/namespaces";

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&meta["namespace"]), text(&meta["name"]))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

impl ApiServer {
    /// Starts serving on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let server = ApiServer {
            addr,
            state: Arc::default(),
            services: Arc::default(),
        };
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = accepting.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let server = server.clone();
                        async move {
                            if req.method() == http::Method::POST {
                                return Ok(server.create(req).await);
                            }
                            if req.method() == http::Method::PATCH {
                                if req.uri().path().ends_with("/status") {
                                    return Ok::<_, Infallible>(server.patch_status(req).await);
                                }
                                return Ok(server.patch_object(req).await);
                            }
                            if req.uri().path() == "/version" {
                                return Ok(version());
                            }
                            if let Some((path, namespace, name)) = object_url(req.uri().path()) {
                                return Ok(server.get_object(&path, &namespace, &name));
                            }
                            Ok(server.handle(req))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    /// `http://127.0.0.1:port`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces an object (ADDED / MODIFIED to watchers).
    pub fn apply(&self, path: &str, mut object: Value) {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let collection = state.collections.entry(path.to_string()).or_default();
        let kind = if collection
            .objects
            .insert(key_of(&object), object.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        collection.log.push((version, kind, object.clone()));
        broadcast_object(collection, kind, &object);
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.entry(path.to_string()).or_default();
        if let Some(mut object) = collection
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        {
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            collection.log.push((version, "DELETED", object.clone()));
            broadcast_object(collection, "DELETED", &object);
        }
    }

    /// Removes an object without telling anyone, as if its event was lost in
    /// compaction; only a relist shows it is gone.
    pub fn delete_unseen(&self, path: &str, namespace: &str, name: &str) {
        let mut state = self.lock();
        state.version += 1;
        let collection = state.collections.entry(path.to_string()).or_default();
        collection
            .objects
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Compacts the history: open watches get an ERROR `410 Gone` and end, and
    /// any watch from an older version gets the same, forcing a relist.
    pub fn expire(&self, path: &str) {
        let mut state = self.lock();
        let version = state.version;
        let collection = state.collections.entry(path.to_string()).or_default();
        collection.compacted = version;
        collection.log.clear();
        broadcast(collection, gone());
        collection.watchers.clear();
    }

    /// Ends every open watch connection of `path` (a dropped watch).
    pub fn drop_watches(&self, path: &str) {
        let mut state = self.lock();
        if let Some(collection) = state.collections.get_mut(path) {
            collection.watchers.clear();
        }
    }

    /// Sends a BOOKMARK with the current version to the watchers of `path`.
    pub fn bookmark(&self, path: &str, api_version: &str, kind: &str) {
        let mut state = self.lock();
        let version = state.version;
        let collection = state.collections.entry(path.to_string()).or_default();
        let object = json!({"apiVersion": api_version, "kind": kind,
                            "metadata": {"resourceVersion": version.to_string()}});
        broadcast(collection, line("BOOKMARK", &object));
    }

    /// Answers `404 NotFound` to lists and watches of `path` from now on, as
    /// for a kind whose CRD is not installed (or, with `served`, serves it
    /// again, as once the CRD is installed).
    pub fn set_served(&self, path: &str, served: bool) {
        let mut state = self.lock();
        if served {
            state.unserved.remove(path);
        } else {
            state.unserved.insert(path.to_string());
        }
    }

    /// How many lists and watches `path` has served.
    pub fn requests(&self, path: &str) -> (usize, usize) {
        let state = self.lock();
        state
            .collections
            .get(path)
            .map_or((0, 0), |c| (c.lists, c.watches))
    }

    /// The status patches (JSON merge patches) `path` has received.
    pub fn status_patches(&self, path: &str) -> Vec<Value> {
        let state = self.lock();
        state
            .collections
            .get(path)
            .map_or_else(Vec::new, |c| c.status_patches.clone())
    }

    /// The object as stored now, if any.
    pub fn object(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.lock();
        let collection = state.collections.get(path)?;
        collection
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The JSON Patches that objects of `path` received (applied or refused).
    pub fn object_patches(&self, path: &str) -> Vec<Value> {
        let state = self.lock();
        state
            .collections
            .get(path)
            .map_or_else(Vec::new, |c| c.object_patches.clone())
    }

    fn get_object(
        &self,
        path: &str,
        namespace: &str,
        name: &str,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        match self.object(path, namespace, name) {
            Some(object) => respond(
                StatusCode::OK,
                Full::new(Bytes::from(object.to_string())).boxed(),
            ),
            None => failure(StatusCode::NOT_FOUND, "NotFound"),
        }
    }

    /// `POST <prefix>/namespaces/<ns>/<resource>`: names an object that has
    /// only a `generateName`, puts it through mutating admission (see
    /// [`crate::admission`]) and stores it (ADDED); with `dryRun=All` it
    /// answers the admitted object and stores nothing.
    async fn create(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let segments: Vec<String> = req.uri().path().split('/').map(str::to_string).collect();
        let Some([.., _, namespace, resource]) = segments.get(1..).filter(|s| s.len() >= 4) else {
            return failure(StatusCode::NOT_FOUND, "NotFound");
        };
        let prefix = segments[1..segments.len() - 3].join("/");
        let path = format!("/{prefix}/{resource}");
        let dry_run = query_of(req.uri())
            .get("dryRun")
            .is_some_and(|d| d == "All");
        let Ok(body) = req.into_body().collect().await else {
            return failure(StatusCode::BAD_REQUEST, "BadRequest");
        };
        let Ok(mut object) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return failure(StatusCode::BAD_REQUEST, "BadRequest");
        };
        object["metadata"]["namespace"] = json!(namespace);
        if key_of(&object).1.is_empty()
            && let Some(stem) = object["metadata"]["generateName"].as_str()
        {
            object["metadata"]["name"] = json!(format!("{stem}{}", generated_suffix()));
        }
        let (group, version) = match prefix.split('/').collect::<Vec<_>>()[..] {
            ["api", version] => ("", version),
            ["apis", group, version] => (group, version),
            _ => return failure(StatusCode::NOT_FOUND, "NotFound"),
        };
        let create = Create {
            group,
            version,
            resource,
            namespace,
            dry_run,
        };
        let object = match self.admit(&create, object).await {
            Ok(object) => object,
            Err(refusal) => return failure(refusal.status, &refusal.reason),
        };
        if self.object(&path, namespace, &key_of(&object).1).is_some() {
            return failure(StatusCode::CONFLICT, "AlreadyExists");
        }
        if dry_run {
            return respond(
                StatusCode::CREATED,
                Full::new(Bytes::from(object.to_string())).boxed(),
            );
        }
        self.apply(&path, object.clone());
        let stored = self.object(&path, namespace, &key_of(&object).1);
        respond(
            StatusCode::CREATED,
            Full::new(Bytes::from(stored.unwrap_or_default().to_string())).boxed(),
        )
    }

    /// Where the Service `namespace/name` port `port` is reached, as cluster
    /// DNS and the Service's endpoints lead the real API server: a webhook
    /// whose `clientConfig` names that Service is called there.
    pub fn route_service(&self, namespace: &str, name: &str, port: u16, addr: SocketAddr) {
        assert!(
            addr.ip().is_loopback(),
            "webhooks are dialled on loopback only"
        );
        self.services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((namespace.to_string(), name.to_string(), port), addr);
    }

    /// `object` after the stored MutatingWebhookConfigurations' webhooks.
    async fn admit(&self, create: &Create<'_>, object: Value) -> Result<Value, Refusal> {
        let configurations: Vec<Value> = {
            let state = self.lock();
            state
                .collections
                .get(WEBHOOK_CONFIGURATIONS)
                .map(|c| c.objects.values().cloned().collect())
                .unwrap_or_default()
        };
        let namespace = self.object(NAMESPACES, "", create.namespace);
        let mut labels =
            namespace.map_or_else(BTreeMap::new, |n| labels_of(&n["metadata"]["labels"]));
        // The API server sets this label on every namespace.
        labels.insert(
            "kubernetes.io/metadata.name".into(),
            create.namespace.into(),
        );
        let routes = self
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        mutate(configurations, &routes, create, &labels, object).await
    }

    /// `PATCH` of an object URL: a JSON Patch (RFC 6902) applied whole or not
    /// at all (a failed `test` answers 422), a merge or strategic merge patch,
    /// or a server-side apply (see [`apply_owned`]); a MODIFIED event sent.
    async fn patch_object(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let Some((path, namespace, name)) = object_url(req.uri().path()) else {
            return failure(StatusCode::NOT_FOUND, "NotFound");
        };
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let query = query_of(req.uri());
        let manager = query.get("fieldManager").cloned().unwrap_or_default();
        let force = query.get("force").is_some_and(|f| f == "true");
        let Ok(body) = req.into_body().collect().await else {
            return failure(StatusCode::BAD_REQUEST, "BadRequest");
        };
        let Ok(value) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return failure(StatusCode::BAD_REQUEST, "BadRequest");
        };
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.entry(path).or_default();
        collection.object_patches.push(value.clone());
        let key = (namespace, name);
        let Some(object) = collection.objects.get_mut(&key) else {
            return failure(StatusCode::NOT_FOUND, "NotFound");
        };
        let mut patched = object.clone();
        let owners = collection.owners.entry(key).or_default();
        match content_type.as_str() {
            "application/json-patch+json" => {
                let Ok(patch) = serde_json::from_value::<json_patch::Patch>(value) else {
                    return failure(StatusCode::BAD_REQUEST, "BadRequest");
                };
                if json_patch::patch(&mut patched, &patch).is_err() {
                    return failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
                }
            }
            "application/apply-patch+yaml" => {
                if let Err(field) = apply_owned(&mut patched, owners, &value, &manager, force) {
                    return failure(StatusCode::CONFLICT, &format!("Conflict: {field}"));
                }
            }
            _ => {
                for (field, set) in leaves(&value, "") {
                    if set.is_null() {
                        owners.remove(&field);
                    } else {
                        owners.insert(field, manager.clone());
                    }
                }
                merge(&mut patched, &value);
            }
        }
        patched["metadata"]["resourceVersion"] = json!(version.to_string());
        *object = patched.clone();
        collection.log.push((version, "MODIFIED", patched.clone()));
        broadcast_object(collection, "MODIFIED", &patched);
        respond(
            StatusCode::OK,
            Full::new(Bytes::from(patched.to_string())).boxed(),
        )
    }

    /// `PATCH /apis/<group>/<version>/namespaces/<ns>/<resource>/<name>/status`
    /// with a JSON merge patch: applied to the object, a MODIFIED event sent.
    async fn patch_status(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let Some(
            [
                prefix @ ..,
                "namespaces",
                namespace,
                resource,
                name,
                "status",
            ],
        ) = Some(parts.as_slice())
        else {
            return respond(StatusCode::NOT_FOUND, Full::new(Bytes::new()).boxed());
        };
        let collection_path = format!("/{}/{resource}", prefix.join("/"));
        let key = (namespace.to_string(), name.to_string());
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return respond(StatusCode::BAD_REQUEST, Full::new(Bytes::new()).boxed()),
        };
        let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
            return respond(StatusCode::BAD_REQUEST, Full::new(Bytes::new()).boxed());
        };
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.entry(collection_path).or_default();
        let Some(object) = collection.objects.get_mut(&key) else {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
            return respond(
                StatusCode::NOT_FOUND,
                Full::new(Bytes::from(status.to_string())).boxed(),
            );
        };
        collection.status_patches.push(patch.clone());
        // Only the status subresource may change through this endpoint.
        if let Some(status) = patch.get("status") {
            merge(&mut object["status"], status);
        }
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let object = object.clone();
        collection.log.push((version, "MODIFIED", object.clone()));
        broadcast_object(collection, "MODIFIED", &object);
        respond(
            StatusCode::OK,
            Full::new(Bytes::from(object.to_string())).boxed(),
        )
    }

    fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_string();
        let query = query_of(req.uri());
        // `metadata.name=<name>` is the one field selector every kind supports.
        let only = query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("metadata.name="))
            .map(str::to_string);
        let selected = |object: &Value| only.as_ref().is_none_or(|name| key_of(object).1 == *name);
        let mut state = self.lock();
        let version = state.version;
        let unserved = state.unserved.contains(&path);
        let collection = state.collections.entry(path).or_default();
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        if unserved {
            collection.lists += usize::from(!watch);
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound: the server could not find the requested resource",
            );
        }
        if !watch {
            collection.lists += 1;
            let items: Vec<Value> = collection
                .objects
                .values()
                .filter(|o| selected(o))
                .cloned()
                .collect();
            let list = json!({"apiVersion": "v1", "kind": "List",
                              "metadata": {"resourceVersion": version.to_string()}, "items": items});
            return respond(
                StatusCode::OK,
                Full::new(Bytes::from(list.to_string())).boxed(),
            );
        }
        collection.watches += 1;
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::channel(1024);
        if from < collection.compacted {
            let _ = tx.try_send(Ok(Frame::data(gone())));
        } else {
            for (_, kind, object) in collection.log.iter().filter(|(v, _, _)| *v > from) {
                if selected(object) {
                    let _ = tx.try_send(Ok(Frame::data(line(kind, object))));
                }
            }
            collection.watchers.push(Watcher { tx, only });
        }
        respond(
            StatusCode::OK,
            StreamBody::new(ReceiverStream::new(rx)).boxed(),
        )
    }
}

/// `(collection path, namespace, name)` of an object's URL: namespaced
/// `<prefix>/namespaces/<ns>/<resource>/<name>` or cluster-scoped
/// `<prefix>/<resource>/<name>`, where the prefix is `/api/v1` or
/// `/apis/<group>/<version>`. Collection URLs give `None`.
fn object_url(path: &str) -> Option<(String, String, String)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix_len = match segments.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return None,
    };
    let (prefix, rest) = segments.split_at_checked(prefix_len)?;
    let prefix = prefix.join("/");
    match rest {
        ["namespaces", namespace, resource, name] => Some((
            format!("/{prefix}/{resource}"),
            namespace.to_string(),
            name.to_string(),
        )),
        [resource, name] => Some((
            format!("/{prefix}/{resource}"),
            String::new(),
            name.to_string(),
        )),
        _ => None,
    }
}

fn failure(status: StatusCode, reason: &str) -> Response<BoxBody<Bytes, Infallible>> {
    // "Conflict: spec.x" -> reason Conflict, the field in the message.
    let message = reason;
    let reason = reason.split(':').next().unwrap_or(reason);
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": status.as_u16()});
    respond(status, Full::new(Bytes::from(body.to_string())).boxed())
}

fn version() -> Response<BoxBody<Bytes, Infallible>> {
    let info = json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                      "gitCommit": "stand-in", "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z",
                      "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"});
    respond(
        StatusCode::OK,
        Full::new(Bytes::from(info.to_string())).boxed(),
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(object) = target {
        for (key, value) in fields {
            if value.is_null() {
                object.remove(key);
            } else {
                merge(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn broadcast(collection: &mut Collection, bytes: Bytes) {
    collection
        .watchers
        .retain(|w| w.tx.try_send(Ok(Frame::data(bytes.clone()))).is_ok());
}

/// An event to the watches whose field selector (if any) matches `object`.
fn broadcast_object(collection: &mut Collection, kind: &str, object: &Value) {
    let bytes = line(kind, object);
    let name = key_of(object).1;
    collection.watchers.retain(|w| {
        w.only.as_ref().is_some_and(|only| *only != name)
            || w.tx.try_send(Ok(Frame::data(bytes.clone()))).is_ok()
    });
}

/// The query's parameters, percent-decoded.
fn query_of(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decoded(v)))
        .collect()
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The leaf fields of a patch body as dotted paths (`spec.holderIdentity`),
/// with their values; `apiVersion`, `kind` and `metadata` are not fields a
/// manager owns here.
fn leaves(value: &Value, prefix: &str) -> Vec<(String, Value)> {
    match value {
        Value::Object(fields) => fields
            .iter()
            .filter(|(k, _)| {
                !prefix.is_empty() || !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
            })
            .flat_map(|(k, v)| {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &path)
            })
            .collect(),
        leaf => vec![(prefix.to_string(), leaf.clone())],
    }
}

/// Server-side apply as the API server does it for these objects: each field
/// of `applied` that another manager set, to a different value, is a
/// conflict (unless `force`); otherwise the fields are merged in and owned by
/// `manager`.
fn apply_owned(
    object: &mut Value,
    owners: &mut HashMap<String, String>,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<(), String> {
    let fields = leaves(applied, "");
    for (field, value) in &fields {
        let current = field.split('.').fold(&*object, |v, k| &v[k]);
        let foreign = owners.get(field).is_some_and(|owner| owner != manager);
        if foreign && current != value && !force {
            return Err(field.clone());
        }
    }
    merge(object, applied);
    for (field, _) in fields {
        owners.insert(field, manager.to_string());
    }
    Ok(())
}

/// Five characters of `[a-z0-9]`, as the API server completes a `generateName`.
fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

fn gone() -> Bytes {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "too old resource version", "reason": "Expired", "code": 410});
    line("ERROR", &status)
}

fn respond(
    status: StatusCode,
    body: BoxBody<Bytes, Infallible>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

//! The file feed: a multi-document YAML file of Kubernetes objects (the same
//! manifests `kubectl apply` takes; `kind: List` too), polled for changes.
//! Each load replaces the index's objects of every kind (a relist), so
//! removing an object from the file removes it from the index. An object that
//! cannot be read is reported by kind, name and field; the others apply.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_yaml::Value;

use super::Readiness;
use crate::index::{Index, Problem, SharedIndex};

/// How often the file's modification time is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Every object of a file, by kind.
#[derive(Debug, Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
}

impl Objects {
    /// Objects of every kind.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.pods.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the index's objects by these, one relist per kind.
    pub fn reset(self, index: &mut Index, problems: Vec<Problem>) {
        index.set_feed_problems(problems);
        index.reset(self.namespaces);
        index.reset(self.pods);
        index.reset(self.services);
        index.reset(self.endpoint_slices);
        index.reset(self.http_routes);
        index.reset(self.grpc_routes);
    }
}

/// A file that is not YAML at all: which objects it holds cannot be known, so
/// none of it is applied and the index keeps what it had.
#[derive(Debug, thiserror::Error)]
#[error("document {document} is not YAML: {message}")]
pub struct SyntaxError {
    pub document: usize,
    pub message: String,
}

/// Reads every document of `text`; problems name the document's kind and name.
pub fn parse(text: &str) -> Result<(Objects, Vec<Problem>), SyntaxError> {
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => add(value, &mut objects, &mut problems),
            // After a syntax error serde_yaml's document iterator yields the
            // same error forever: stop at the first one.
            Err(e) => {
                return Err(SyntaxError {
                    document: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok((objects, problems))
}

fn add(value: Value, objects: &mut Objects, problems: &mut Vec<Problem>) {
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = text(&value, "kind");
    let api_version = text(&value, "apiVersion");
    let meta = value.get("metadata").cloned().unwrap_or(Value::Null);
    let object = match (text(&meta, "namespace"), text(&meta, "name")) {
        (ns, name) if ns.is_empty() => name,
        (ns, name) => format!("{ns}/{name}"),
    };
    let mut problem = |field: &str, message: String| {
        problems.push(Problem {
            kind: kind.clone(),
            object: object.clone(),
            field: field.to_string(),
            message,
        })
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            for item in value
                .get("items")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                add(item.clone(), objects, problems);
            }
        }
        ("v1", "Namespace") => read(value, &mut objects.namespaces, &mut problem),
        ("v1", "Service") => read(value, &mut objects.services, &mut problem),
        ("v1", "Pod") => read(value, &mut objects.pods, &mut problem),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            read(value, &mut objects.endpoint_slices, &mut problem)
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            read(value, &mut objects.http_routes, &mut problem)
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            read(value, &mut objects.grpc_routes, &mut problem)
        }
        _ if kind.is_empty() => problem("kind", "missing".to_string()),
        // Other kinds (Deployments, ConfigMaps...) may share the file; they are not ours.
        _ => tracing::debug!(%kind, %api_version, %object, "file feed: kind ignored"),
    }
}

fn read<T: serde::de::DeserializeOwned>(
    value: Value,
    into: &mut Vec<T>,
    problem: &mut impl FnMut(&str, String),
) {
    // Going through text gives serde_yaml's error the path of the bad field.
    let result = serde_yaml::to_string(&value)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_yaml::from_str::<T>(&text).map_err(|e| e.to_string()));
    match result {
        Ok(object) => into.push(object),
        Err(message) => {
            let field = message.split_once(": ").map(|(f, _)| f).unwrap_or_default();
            let field = if field.contains(' ') { "" } else { field };
            problem(field, message.clone())
        }
    }
}

/// Loads `path` into the index now and whenever its modification time
/// changes; marks `ready` after the first successful load, and calls
/// `on_load` with the index after each. Runs until dropped.
pub async fn run(path: PathBuf, index: SharedIndex, ready: Readiness, on_load: impl Fn(&Index)) {
    let mut loaded: Option<SystemTime> = None;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let modified = match tokio::fs::metadata(&path).await.and_then(|m| m.modified()) {
            Ok(modified) => modified,
            Err(e) => {
                if loaded.is_some() || !ready.is_ready() {
                    tracing::warn!(path = %path.display(), error = %e, "file feed: cannot read the file; keeping the last objects");
                }
                loaded = None;
                continue;
            }
        };
        if loaded == Some(modified) {
            continue;
        }
        match load(&path, &index).await {
            Ok(()) => {
                on_load(&index.lock());
                loaded = Some(modified);
                ready.set_ready();
            }
            Err(LoadError::Refused(e)) => {
                // Reported once per version of the file, not at every poll.
                tracing::warn!(path = %path.display(), error = %e, "file feed: file refused; keeping the last objects");
                loaded = Some(modified);
            }
            Err(LoadError::Unreadable(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "file feed: cannot read the file")
            }
        }
    }
}

/// Why a load applied nothing; the index is left as it was either way.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading failed (missing, no permission): tried again at the next poll.
    #[error(transparent)]
    Unreadable(std::io::Error),
    /// Read, but not YAML text (not UTF-8, or a syntax error): refused until
    /// the file changes.
    #[error(transparent)]
    Refused(SyntaxError),
}

/// Reads and applies the file once; a file that is not YAML text is refused
/// whole, leaving the index as it was.
pub async fn load(path: &Path, index: &SharedIndex) -> Result<(), LoadError> {
    let bytes = tokio::fs::read(path).await.map_err(LoadError::Unreadable)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        LoadError::Refused(SyntaxError {
            document: 1,
            message: format!("not UTF-8 text: {e}"),
        })
    })?;
    let (objects, problems) = parse(&text).map_err(LoadError::Refused)?;
    let _span = tracing::info_span!(
        "plexus.feed.file.load",
        plexus.feed.path = %path.display(),
        plexus.feed.objects = objects.len() as i64,
        plexus.feed.problems = problems.len() as i64,
    )
    .entered();
    for problem in &problems {
        tracing::warn!(%problem, path = %path.display(), "file feed: object not applied");
    }
    objects.reset(&mut index.lock(), problems);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  ports: [{name: http, port: "eighty"}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: [10.0.0.1]}]
"#;

    #[test]
    fn valid_objects_apply_and_invalid_ones_are_named() {
        let (objects, problems) = parse(FILE).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.endpoint_slices.len(), 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].kind.as_str(), problems[0].object.as_str()),
            ("Service", "shop/broken")
        );
        assert!(
            problems[0].field.starts_with("spec.ports[0]"),
            "{:?}",
            problems[0]
        );

        let mut index = Index::new(Default::default());
        objects.reset(&mut index, problems);
        let view = index.resolve("web.shop:80", "").unwrap();
        let target = view.meshed.as_ref().unwrap();
        let backend = &target.backends.value.backends[&target.name];
        assert_eq!(backend.endpoints[0].address, "10.0.0.1:8080");
        assert_eq!(index.problems().len(), 1);
    }

    #[test]
    fn a_file_that_is_not_yaml_is_one_error_not_an_endless_one() {
        let error = parse("this: is: not: yaml: [").expect_err("refused");
        assert_eq!(error.document, 1);
        let error = parse(&format!("{FILE}---\nthis: is: not: yaml: [\n")).expect_err("refused");
        // FILE holds four documents; the fifth is the bad one.
        assert_eq!(error.document, 5, "{error}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_yaml_leaves_the_index_as_it_was() {
        let dir = std::env::temp_dir().join(format!("plexus-file-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("objects.yaml");
        let index = SharedIndex::new(Default::default());
        std::fs::write(&path, FILE).unwrap();
        load(&path, &index).await.unwrap();
        std::fs::write(&path, "this: is: not: yaml: [").unwrap();
        let refused = load(&path, &index).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(refused, Err(LoadError::Refused(_))), "{refused:?}");
        let rx = index.lock().watch_target("web.shop:80", "").unwrap();
        assert!(rx.borrow().meshed.is_some(), "the last objects stay");
    }

    #[tokio::test]
    async fn the_file_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("plexus-file-feed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("objects.yaml");
        std::fs::write(&path, FILE).unwrap();
        let index = SharedIndex::new(Default::default());
        let ready = Readiness::default();
        let feed = tokio::spawn(run(path.clone(), index.clone(), ready.clone(), |_| ()));
        let mut rx = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if ready.is_ready() {
                    break index.lock().watch_target("web.shop:80", "").unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the feed loads the file");
        assert!(rx.borrow_and_update().meshed.is_some());

        // Removing the Service from the file removes it from the index. Some
        // filesystems keep whole-second mtimes: write until the feed notices.
        let without_web = FILE.replacen(
            "name: web, namespace: shop}",
            "name: other, namespace: shop}",
            1,
        );
        let changed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                std::fs::write(&path, &without_web).unwrap();
                if tokio::time::timeout(Duration::from_millis(1500), rx.changed())
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        })
        .await;
        feed.abort();
        let _ = std::fs::remove_dir_all(&dir);
        changed.expect("the feed re-reads the changed file");
        assert!(rx.borrow().meshed.is_none());
    }
}

//! The file feed: a multi-document YAML file of Kubernetes objects (the same
//! manifests `kubectl apply` takes; `kind: List` too), polled for changes.
//!
//! A version of the file is read once it has stood still for one poll (a
//! file being written is not read half-way), and then it is either
//!
//! - refused whole, every object staying as it was, when it is not UTF-8,
//!   not YAML (the error names its line and column), or **empty**: no
//!   document at all, only whitespace, comments or `---` — what an editor's
//!   truncate-then-write leaves for a moment. To remove every object, write a
//!   document that lists none: `apiVersion: v1`, `kind: List`, `items: []`
//!   (what `kubectl get … -o yaml` prints for nothing);
//! - or applied: each kind is relisted from the file, so an object absent
//!   from it is deleted. An object that does not read (a field of the wrong
//!   type) is refused with every bad field named, and one whose new version
//!   the index refuses (a bad route rule, a bad annotation) keeps its served
//!   version: see the index's ledger.
//!
//! Versions of the file are counted from 1; an object read from version `n`
//! has `fileVersion: n` on `/status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use plexus_core::FileVersion;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::Readiness;
use super::decode::{decode, unreadable};
use crate::index::{
    FileRefusal, FileStatus, Index, Kind, Problem, ReferenceGrant, SharedIndex, Unreadable,
};

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
    pub reference_grants: Vec<ReferenceGrant>,
    /// Objects of a known kind that do not read into its type.
    pub unreadable: Vec<Unreadable>,
    /// Documents that name no object (no `kind`).
    pub problems: Vec<Problem>,
}

impl Objects {
    /// Objects of every kind that read.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.pods.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.reference_grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the index's objects by these, one relist per kind, as read
    /// from version `version` of the file.
    pub fn apply(mut self, index: &mut Index, version: u64) {
        let mut of_kind = |kind: Kind| -> Vec<Unreadable> {
            self.unreadable.extract_if(.., |u| u.kind == kind).collect()
        };
        let unreadable = [
            of_kind(Kind::Namespace),
            of_kind(Kind::Pod),
            of_kind(Kind::Service),
            of_kind(Kind::EndpointSlice),
            of_kind(Kind::ReferenceGrant),
            of_kind(Kind::HttpRoute),
            of_kind(Kind::GrpcRoute),
        ];
        let [
            namespaces,
            pods,
            services,
            slices,
            grants,
            http_routes,
            grpc_routes,
        ] = unreadable;
        index.set_file_version(Some(version));
        index.set_feed_problems(self.problems);
        index.relist(self.namespaces, namespaces);
        index.relist(self.pods, pods);
        index.relist(self.services, services);
        index.relist(self.endpoint_slices, slices);
        // Before the routes, whose backendRefs they may allow.
        index.relist(self.reference_grants, grants);
        index.relist(self.http_routes, http_routes);
        index.relist(self.grpc_routes, grpc_routes);
        index.set_file_version(None);
    }
}

/// Why a version of the file was refused whole; the index keeps what it had.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "the file holds no document (being written?); to remove every object, \
         write `apiVersion: v1`, `kind: List`, `items: []`"
    )]
    Empty,
    #[error("not UTF-8 text: {0}")]
    Encoding(std::string::FromUtf8Error),
    #[error(transparent)]
    Syntax(SyntaxError),
}

/// A file that is not YAML at all: which objects it holds cannot be known.
#[derive(Debug, thiserror::Error)]
#[error("document {document} is not YAML: {message}{}", at(*line, *column))]
pub struct SyntaxError {
    pub document: usize,
    /// 1-based, in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

impl SyntaxError {
    fn new(document: usize, error: &serde_yaml::Error) -> Self {
        let location = error.location();
        let message = error.to_string();
        // The position is kept apart; drop serde_yaml's copy of it.
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        Self {
            document,
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message,
        }
    }
}

impl Refused {
    fn status(&self, version: u64) -> FileRefusal {
        let (reason, line, column) = match self {
            Refused::Empty => ("empty", None, None),
            Refused::Encoding(_) => ("encoding", None, None),
            Refused::Syntax(e) => ("syntax", e.line, e.column),
        };
        FileRefusal {
            version,
            reason,
            line,
            column,
            message: self.to_string(),
        }
    }
}

/// Reads every document of `text`.
pub fn parse(text: &str) -> Result<Objects, Refused> {
    let mut objects = Objects::default();
    let mut documents = 0;
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => {
                documents += 1;
                add(value, &mut objects);
            }
            // After a syntax error serde_yaml's document iterator yields the
            // same error forever: stop at the first one.
            Err(e) => return Err(Refused::Syntax(SyntaxError::new(i + 1, &e))),
        }
    }
    if documents == 0 {
        return Err(Refused::Empty);
    }
    Ok(objects)
}

fn add(value: Value, objects: &mut Objects) {
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = text(&value, "kind");
    let api_version = text(&value, "apiVersion");
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            for item in value
                .get("items")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                add(item.clone(), objects);
            }
        }
        ("v1", "Namespace") => read(value, Kind::Namespace, objects, |o| &mut o.namespaces),
        ("v1", "Service") => read(value, Kind::Service, objects, |o| &mut o.services),
        ("v1", "Pod") => read(value, Kind::Pod, objects, |o| &mut o.pods),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            read(value, Kind::EndpointSlice, objects, |o| {
                &mut o.endpoint_slices
            })
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            read(value, Kind::HttpRoute, objects, |o| &mut o.http_routes)
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            read(value, Kind::GrpcRoute, objects, |o| &mut o.grpc_routes)
        }
        // The same fields in both versions.
        (
            "gateway.networking.k8s.io/v1beta1" | "gateway.networking.k8s.io/v1",
            "ReferenceGrant",
        ) => read(value, Kind::ReferenceGrant, objects, |o| {
            &mut o.reference_grants
        }),
        _ if kind.is_empty() => {
            let meta = value.get("metadata").cloned().unwrap_or(Value::Null);
            let object = match (text(&meta, "namespace"), text(&meta, "name")) {
                (ns, name) if ns.is_empty() => name,
                (ns, name) => format!("{ns}/{name}"),
            };
            objects.problems.push(Problem {
                kind,
                object,
                field: "kind".to_string(),
                message: "missing".to_string(),
            });
        }
        // Other kinds (Deployments, ConfigMaps...) may share the file; they are not ours.
        _ => tracing::debug!(%kind, %api_version, "file feed: kind ignored"),
    }
}

fn read<T: DeserializeOwned>(
    value: Value,
    kind: Kind,
    objects: &mut Objects,
    into: impl FnOnce(&mut Objects) -> &mut Vec<T>,
) {
    match decode::<T>(&value) {
        Ok(object) => into(objects).push(object),
        Err(errors) => {
            let json = serde_json::to_value(&value).unwrap_or_default();
            objects.unreadable.push(unreadable(kind, &json, errors));
        }
    }
}

async fn stamp(path: &Path) -> std::io::Result<FileVersion> {
    Ok(FileVersion::of(&tokio::fs::metadata(path).await?))
}

/// Which versions of the file to read: a new one once it stood still for a poll.
#[derive(Debug)]
struct Changes<V = FileVersion> {
    /// At the previous poll.
    seen: Option<V>,
    /// The version last read (applied or refused).
    read: Option<V>,
    /// Another stamp was seen since that read: even the same stamp again is
    /// a new version (a filesystem with whole-second times, a rewrite of the
    /// same length).
    changed: bool,
}

impl<V> Default for Changes<V> {
    fn default() -> Self {
        Changes {
            seen: None,
            read: None,
            changed: false,
        }
    }
}

// Generic over the version only so that its tests can name versions by number.
impl<V: Copy + PartialEq> Changes<V> {
    /// Whether the file, now at `stamp`, holds a version to read.
    fn has_new_version(&mut self, stamp: V) -> bool {
        let still = self.seen == Some(stamp);
        self.seen = Some(stamp);
        self.changed |= self.read != Some(stamp);
        still && self.changed
    }

    fn read(&mut self, stamp: V) {
        self.read = Some(stamp);
        self.changed = false;
    }
}

/// Loads `path` into the index now and whenever it changes; marks `ready`
/// after the first successful load, and calls `on_load` with the index after
/// each. Runs until dropped.
pub async fn run(path: PathBuf, index: SharedIndex, ready: Readiness, on_load: impl Fn(&Index)) {
    let mut changes = Changes::default();
    let mut version = 0;
    let mut unreadable = false;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let stamp = match stamp(&path).await {
            Ok(stamp) => stamp,
            Err(e) => {
                if !unreadable {
                    unreadable = true;
                    tracing::warn!(path = %path.display(), error = %e, "file feed: cannot read the file; keeping the last objects");
                    set_status(&index, &path, |status| status.error = Some(e.to_string()));
                }
                changes.seen = None;
                continue;
            }
        };
        if std::mem::take(&mut unreadable) {
            set_status(&index, &path, |status| status.error = None);
        }
        if !changes.has_new_version(stamp) {
            continue;
        }
        version += 1;
        match load(&path, &index, version).await {
            Ok(()) => {
                on_load(&index.lock());
                changes.read(stamp);
                ready.set_ready();
            }
            Err(LoadError::Refused(e)) => {
                // Reported once per version of the file, not at every poll.
                tracing::warn!(path = %path.display(), file_version = version, error = %e, "file feed: file refused; keeping the last objects");
                changes.read(stamp);
            }
            Err(LoadError::Unreadable(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "file feed: cannot read the file");
                set_status(&index, &path, |status| status.error = Some(e.to_string()));
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
    /// Read, and refused whole until the file changes.
    #[error(transparent)]
    Refused(Refused),
}

/// Reads the file once and applies it as version `version`, or refuses it
/// whole (the index keeps what it had); `/status` says which.
pub async fn load(path: &Path, index: &SharedIndex, version: u64) -> Result<(), LoadError> {
    let bytes = tokio::fs::read(path).await.map_err(LoadError::Unreadable)?;
    let parsed = String::from_utf8(bytes)
        .map_err(Refused::Encoding)
        .and_then(|text| parse(&text));
    let objects = match parsed {
        Ok(objects) => objects,
        Err(refused) => {
            set_status(index, path, |status| {
                status.refused = Some(refused.status(version));
                status.error = None;
            });
            return Err(LoadError::Refused(refused));
        }
    };
    let _span = tracing::info_span!(
        "plexus.feed.file.load",
        plexus.feed.path = %path.display(),
        plexus.feed.version = version as i64,
        plexus.feed.objects = objects.len() as i64,
        // Objects that do not read, and documents that name none.
        plexus.feed.problems = (objects.unreadable.len() + objects.problems.len()) as i64,
    )
    .entered();
    let mut index = index.lock();
    objects.apply(&mut index, version);
    let status = FileStatus {
        path: path.display().to_string(),
        served: Some(version),
        refused: None,
        error: None,
    };
    index.set_file_status(status);
    Ok(())
}

fn set_status(index: &SharedIndex, path: &Path, change: impl FnOnce(&mut FileStatus)) {
    let mut index = index.lock();
    let mut status = index.file_status().cloned().unwrap_or_else(|| FileStatus {
        path: path.display().to_string(),
        served: None,
        refused: None,
        error: None,
    });
    change(&mut status);
    index.set_file_status(status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Revision;

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
  ports: [{name: http, port: "eighty"}, {name: grpc, port: 9090, appProtocol: [h2c]}]
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

    fn endpoints(index: &mut Index) -> Vec<String> {
        let view = index.resolve("web.shop:80", "").unwrap();
        let Some(target) = view.meshed.as_ref() else {
            return Vec::new();
        };
        let backend = &target.backends.value.backends[&target.name];
        backend
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect()
    }

    #[test]
    fn valid_objects_apply_and_unreadable_ones_are_named_with_every_bad_field() {
        let objects = parse(FILE).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.endpoint_slices.len(), 1);
        assert_eq!(objects.unreadable.len(), 1, "{:?}", objects.unreadable);
        let broken = &objects.unreadable[0];
        assert_eq!(
            (broken.kind, broken.key().to_string()),
            (Kind::Service, "shop/broken".into())
        );
        let fields: Vec<&str> = broken.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports[0].port", "spec.ports[1].appProtocol"]);

        let mut index = Index::new(Default::default());
        objects.apply(&mut index, 1);
        assert_eq!(endpoints(&mut index), ["10.0.0.1:8080"]);
        let refusals = index.refusals();
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].served, None, "nothing of it was ever served");
        assert_eq!(refusals[0].refused.revision, Some(Revision::File(1)));
    }

    #[test]
    fn reference_grants_read_in_either_version() {
        let grant = |version: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/{version}\nkind: ReferenceGrant\n\
                 metadata: {{name: from-shop, namespace: data}}\n\
                 spec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}}]\n  \
                 to: [{{group: \"\", kind: Service}}]\n"
            )
        };
        for version in ["v1beta1", "v1"] {
            let objects = parse(&grant(version)).unwrap();
            assert_eq!(objects.reference_grants.len(), 1, "{version}");
            assert_eq!(objects.len(), 1);
        }
    }

    #[test]
    fn a_file_that_is_not_yaml_is_one_error_naming_its_line() {
        let Err(Refused::Syntax(error)) = parse("this: is: not: yaml: [") else {
            panic!("refused as a syntax error")
        };
        assert_eq!(
            (error.document, error.line, error.column),
            (1, Some(1), Some(9))
        );
        let text = format!("{FILE}---\nthis: is: not: yaml: [\n");
        let Err(Refused::Syntax(error)) = parse(&text) else {
            panic!("refused as a syntax error")
        };
        // FILE holds four documents; the fifth is the bad one, on the file's line 29.
        assert_eq!((error.document, error.line), (5, Some(29)), "{error}");
        assert!(!error.message.contains(" at line "), "{error}");
        assert!(error.to_string().contains("line 29"), "{error}");
    }

    #[test]
    fn a_file_without_documents_is_refused_and_an_empty_list_is_not() {
        for empty in ["", "  \n\n", "# being written\n", "---\n---\n"] {
            assert!(matches!(parse(empty), Err(Refused::Empty)), "{empty:?}");
        }
        let none =
            parse("apiVersion: v1\nkind: List\nitems: []\n").expect("an explicit empty list");
        assert!(none.is_empty());
        // A file of other kinds only is well-formed too: it holds none of ours.
        let others = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n").unwrap();
        assert!(others.is_empty());
    }

    #[test]
    fn changes_are_read_once_they_stood_still_for_a_poll() {
        // A version by its length: the same number is the same stamp.
        let at = |len: u64| len;
        let mut changes = Changes::default();
        assert!(
            !changes.has_new_version(at(10)),
            "first seen: may still be written"
        );
        assert!(changes.has_new_version(at(10)), "stood still: read it");
        changes.read(at(10));
        assert!(!changes.has_new_version(at(10)), "read already");
        assert!(!changes.has_new_version(at(0)), "truncated: wait");
        assert!(!changes.has_new_version(at(5)), "half written: wait");
        assert!(!changes.has_new_version(at(10)), "written: wait one poll");
        assert!(
            changes.has_new_version(at(10)),
            "the same stamp as the last read, but a new version"
        );
    }

    /// A file in a directory of its own, removed when dropped.
    struct FeedFile(PathBuf);

    impl FeedFile {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "plexus-file-{name}-{}-{:x}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir.join("objects.yaml"))
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).unwrap();
        }
    }

    impl Drop for FeedFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn rand_suffix() -> u128 {
        use std::time::SystemTime;
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_refused_file_leaves_the_index_as_it_was_and_says_why() {
        let file = FeedFile::new("refused");
        let index = SharedIndex::new(Default::default());
        file.write(FILE);
        load(&file.0, &index, 1).await.unwrap();
        for (version, text, reason) in [(2, "this: is: not: yaml: [", "syntax"), (3, "", "empty")] {
            file.write(text);
            let refused = load(&file.0, &index, version).await;
            assert!(matches!(refused, Err(LoadError::Refused(_))), "{refused:?}");
            let mut index = index.lock();
            assert_eq!(
                endpoints(&mut index),
                ["10.0.0.1:8080"],
                "the last objects stay"
            );
            let status = index.file_status().unwrap();
            assert_eq!(status.served, Some(1));
            let refusal = status.refused.as_ref().unwrap();
            assert_eq!((refusal.version, refusal.reason), (version, reason));
        }
        file.write("apiVersion: v1\nkind: List\nitems: []\n");
        load(&file.0, &index, 4).await.unwrap();
        let mut index = index.lock();
        assert!(
            endpoints(&mut index).is_empty(),
            "an explicit empty list deletes all"
        );
        assert_eq!(index.file_status().unwrap().refused, None);
    }

    #[tokio::test]
    async fn an_unreadable_new_version_of_an_object_keeps_the_served_one() {
        let file = FeedFile::new("unreadable");
        let index = SharedIndex::new(Default::default());
        file.write(FILE);
        load(&file.0, &index, 1).await.unwrap();
        // The Service `web` gets a port of the wrong type: it stays as it was.
        file.write(&FILE.replacen("port: 80}", "port: \"80/tcp\"}", 1));
        load(&file.0, &index, 2).await.unwrap();
        let mut index = index.lock();
        assert_eq!(endpoints(&mut index), ["10.0.0.1:8080"]);
        let refusal = index
            .refusals()
            .into_iter()
            .find(|r| r.object == "shop/web")
            .expect("web's new version refused");
        assert_eq!(
            refusal.served.as_ref().and_then(|v| v.revision.clone()),
            Some(Revision::File(1))
        );
        assert_eq!(refusal.refused.revision, Some(Revision::File(2)));
        assert_eq!(refusal.problems[0].field, "spec.ports[0].port");
    }

    #[tokio::test]
    async fn the_file_is_reread_when_it_changes() {
        let file = FeedFile::new("reread");
        file.write(FILE);
        let index = SharedIndex::new(Default::default());
        let ready = Readiness::default();
        let feed = tokio::spawn(run(file.0.clone(), index.clone(), ready.clone(), |_| ()));
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

        // Removing the Service from the file removes it from the index.
        let without_web = FILE.replacen(
            "name: web, namespace: shop}",
            "name: other, namespace: shop}",
            1,
        );
        let changed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                file.write(&without_web);
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
        changed.expect("the feed re-reads the changed file");
        assert!(rx.borrow().meshed.is_none());
    }
}

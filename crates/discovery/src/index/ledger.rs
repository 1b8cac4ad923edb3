//! What the index made of each object it was fed: the problems of the version
//! it serves, and the newer version it refused. The rule (docs/architecture.md,
//! "Last good version"): a version with a bad field is refused while an
//! earlier version of the same object (kind, namespace, name) is served, so a
//! bad edit never costs traffic; with nothing served, its valid parts apply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

use super::{Kind, ObjectRef, Problem};

/// Which version of an object: the API server's `resourceVersion` (Kubernetes
/// feed) or the version of the file it was read from (file feed), and its
/// `metadata.generation`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    pub revision: Option<Revision>,
    /// `metadata.generation`; 0 when the object has none (files, Pods).
    pub generation: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revision {
    /// `metadata.resourceVersion`.
    Resource(Box<str>),
    /// The file feed's count of file versions read (1 for the first).
    File(u64),
}

impl Version {
    /// The version of `meta`, as read from the file's version `file` when
    /// the object came from a file (whose `resourceVersion`, if any, is a
    /// copy from some cluster).
    pub fn of(meta: &ObjectMeta, file: Option<u64>) -> Self {
        let revision = match file {
            Some(file) => Some(Revision::File(file)),
            None => meta
                .resource_version
                .as_deref()
                .map(|v| Revision::Resource(v.into())),
        };
        Self {
            revision,
            generation: meta.generation.unwrap_or(0),
        }
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match &self.revision {
            Some(Revision::Resource(v)) => map.serialize_entry("resourceVersion", v)?,
            Some(Revision::File(v)) => map.serialize_entry("fileVersion", v)?,
            None => {}
        }
        if self.generation != 0 {
            map.serialize_entry("generation", &self.generation)?;
        }
        map.end()
    }
}

/// A version of an object the index did not apply, and the one it serves
/// instead (`None`: nothing, the object is not served at all).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refusal {
    pub kind: Kind,
    pub object: String,
    pub served: Option<Version>,
    pub refused: Version,
    /// Every bad field of the refused version.
    pub problems: Vec<Problem>,
}

/// An object a feed could not read into its kind's type (a field of the wrong
/// type, an unknown enum value): named by what its metadata says, refused
/// whole with every bad field found.
#[derive(Clone, Debug)]
pub struct Unreadable {
    pub kind: Kind,
    /// What could be read of `metadata`: namespace, name, resourceVersion, generation.
    pub meta: ObjectMeta,
    pub problems: Vec<Problem>,
    /// Routes: `spec.parentRefs` as written, so each Service parent can say
    /// it refused the route.
    pub parent_refs: Vec<Value>,
    /// Routes: `status.parents` as the object carried it (other controllers' entries).
    pub status_parents: Vec<Value>,
}

impl Unreadable {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::of(&self.meta)
    }
}

/// Whether a new version applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Apply,
    /// Refused: the served version stays.
    Keep,
}

/// The problems and refusals of every object, by kind and key.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Problems of the served version (its valid parts apply).
    problems: BTreeMap<(Kind, ObjectRef), Vec<Problem>>,
    refusals: BTreeMap<(Kind, ObjectRef), Refusal>,
}

impl Ledger {
    /// Decides on a new version with `problems`, given the version served
    /// (`None`: none) and whether the new one reads the same as it
    /// (`unchanged`: a relist, a reload of the file). Logs what is new.
    pub fn admit(
        &mut self,
        kind: Kind,
        key: &ObjectRef,
        served: Option<&Version>,
        unchanged: bool,
        version: &Version,
        problems: Vec<Problem>,
    ) -> Admission {
        let slot = (kind, key.clone());
        // The served version again, problems and all, is not a new version to refuse.
        let again = unchanged
            && self
                .problems
                .get(&slot)
                .map_or(problems.is_empty(), |p| *p == problems);
        match served {
            Some(served) if !problems.is_empty() && !again => {
                self.refuse(kind, key, Some(served.clone()), version.clone(), problems);
                Admission::Keep
            }
            _ => {
                self.accept(kind, key, problems);
                Admission::Apply
            }
        }
    }

    /// Records that a version was applied with these problems (none: clean).
    pub fn accept(&mut self, kind: Kind, key: &ObjectRef, problems: Vec<Problem>) {
        let slot = (kind, key.clone());
        if self.refusals.remove(&slot).is_some() {
            tracing::info!(%kind, object = %key, "object accepted again; its refused version is gone");
        }
        if problems.is_empty() {
            self.problems.remove(&slot);
            return;
        }
        if self.problems.get(&slot) != Some(&problems) {
            tracing::warn!(%kind, object = %key, problems = %summary(&problems), "invalid object: its valid parts apply");
        }
        self.problems.insert(slot, problems);
    }

    /// Records a refused version; `served` is what stays in force.
    pub fn refuse(
        &mut self,
        kind: Kind,
        key: &ObjectRef,
        served: Option<Version>,
        refused: Version,
        problems: Vec<Problem>,
    ) {
        let slot = (kind, key.clone());
        let known = self
            .refusals
            .get(&slot)
            .is_some_and(|r| r.problems == problems);
        if !known {
            match &served {
                Some(_) => {
                    tracing::warn!(%kind, object = %key, problems = %summary(&problems), "object version refused; the last accepted version stays in force")
                }
                None => {
                    tracing::warn!(%kind, object = %key, problems = %summary(&problems), "object refused; nothing of it is served")
                }
            }
        }
        self.refusals.insert(
            slot,
            Refusal {
                kind,
                object: key.to_string(),
                served,
                refused,
                problems,
            },
        );
    }

    /// Forgets an object (deleted).
    pub fn forget(&mut self, kind: Kind, key: &ObjectRef) {
        let slot = (kind, key.clone());
        self.problems.remove(&slot);
        self.refusals.remove(&slot);
    }

    /// Forgets the objects of `kind` not in `listed` (the end of a relist).
    pub fn forget_unlisted(&mut self, kind: Kind, listed: &std::collections::HashSet<ObjectRef>) {
        let unlisted = |(k, key): &(Kind, ObjectRef)| *k == kind && !listed.contains(key);
        self.problems.retain(|slot, _| !unlisted(slot));
        self.refusals.retain(|slot, _| !unlisted(slot));
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten()
    }

    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.values()
    }
}

/// Problems listed in a one-line summary at most; the rest are counted.
const SUMMARY_PROBLEMS: usize = 16;

/// `field: message; field: message` (bounded: a route status message has a
/// limit, and a log line should stay readable).
pub fn summary(problems: &[Problem]) -> String {
    let mut out = String::new();
    for problem in problems.iter().take(SUMMARY_PROBLEMS) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if problem.field.is_empty() {
            out.push_str(&problem.message);
        } else {
            let _ = write!(out, "{}: {}", problem.field, problem.message);
        }
    }
    if problems.len() > SUMMARY_PROBLEMS {
        let _ = write!(out, "; and {} more", problems.len() - SUMMARY_PROBLEMS);
    }
    out
}

/// What the file feed says of its file, for `/status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileStatus {
    pub path: String,
    /// The version of the file whose objects are served (`None`: none yet).
    pub served: Option<u64>,
    /// The last version refused whole, while it is the newest one read.
    pub refused: Option<FileRefusal>,
    /// Why the file cannot be read now (missing, no permission), if so.
    pub error: Option<String>,
}

/// Why a version of the file was refused whole.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileRefusal {
    pub version: u64,
    /// `empty`, `syntax` or `encoding`.
    pub reason: &'static str,
    /// Where the error is, 1-based, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(field: &str) -> Problem {
        Problem::new(Kind::Service, &ObjectRef::new("shop", "web"), field, "bad")
    }

    #[test]
    fn a_bad_version_is_refused_only_while_another_is_served() {
        let mut ledger = Ledger::default();
        let key = ObjectRef::new("shop", "web");
        let v1 = Version {
            revision: Some(Revision::Resource("1".into())),
            generation: 1,
        };
        let v2 = Version {
            revision: Some(Revision::Resource("2".into())),
            generation: 2,
        };
        // Nothing served: its valid parts apply, its problems are the served version's.
        assert_eq!(
            ledger.admit(Kind::Service, &key, None, false, &v1, vec![problem("a")]),
            Admission::Apply
        );
        assert_eq!(ledger.problems().count(), 1);
        // Served: a bad version is refused, naming both versions and every field.
        assert_eq!(
            ledger.admit(
                Kind::Service,
                &key,
                Some(&v1),
                false,
                &v2,
                vec![problem("b"), problem("c")]
            ),
            Admission::Keep
        );
        let refusal = ledger.refusals().next().unwrap();
        assert_eq!(
            (refusal.served.as_ref(), &refusal.refused),
            (Some(&v1), &v2)
        );
        assert_eq!(summary(&refusal.problems), "b: bad; c: bad");
        // A good version applies and clears both.
        assert_eq!(
            ledger.admit(Kind::Service, &key, Some(&v1), false, &v2, Vec::new()),
            Admission::Apply
        );
        assert_eq!(ledger.refusals().count(), 0);
        assert_eq!(ledger.problems().count(), 0);
    }

    #[test]
    fn versions_serialize_as_kubernetes_names_them() {
        let k8s = Version {
            revision: Some(Revision::Resource("42".into())),
            generation: 3,
        };
        assert_eq!(
            serde_json::to_value(&k8s).unwrap(),
            serde_json::json!({"resourceVersion": "42", "generation": 3})
        );
        let file = Version {
            revision: Some(Revision::File(7)),
            generation: 0,
        };
        assert_eq!(
            serde_json::to_value(&file).unwrap(),
            serde_json::json!({"fileVersion": 7})
        );
    }

    #[test]
    fn summaries_are_bounded() {
        let many: Vec<Problem> = (0..40).map(|i| problem(&format!("f{i}"))).collect();
        let text = summary(&many);
        assert!(text.ends_with("; and 24 more"), "{text}");
        assert_eq!(text.matches(": bad").count(), SUMMARY_PROBLEMS);
    }
}

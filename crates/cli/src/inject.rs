//! `plexusctl inject`: the injector's mutation applied offline to Kubernetes YAML.
//!
//! Uses the injector's [`plan`] (`plexus-inject`, the same code the controller's admission webhook
//! runs) on every pod template, so offline and in-cluster injection cannot drift. The namespace's
//! `plexus.io/inject` is not consulted: asking for injection is the user's explicit request;
//! a pod template's `plexus.io/inject: disabled`, hostNetwork and already injected pods are
//! still left alone.

use anyhow::{Context, Result, anyhow};
use json_patch::jsonptr::{Pointer, PointerBuf};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use plexus_inject::{InjectConfig, plan};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The result of [`inject_documents`].
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The input documents, pod templates injected, as multi-document YAML.
    pub yaml: String,
    /// One line per workload: injected, or why not, and any ignored annotation (for stderr).
    pub notes: Vec<String>,
}

/// Injects the proxy into every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and
/// CronJob (also inside a `kind: List`) of the multi-document YAML `input`. Other documents
/// pass through unchanged; keys keep their order.
pub fn inject_documents(input: &str, config: &InjectConfig) -> Result<String> {
    inject_with_notes(input, config).map(|injected| injected.yaml)
}

/// Like [`inject_documents`], also saying what was done to each workload.
pub fn inject_with_notes(input: &str, config: &InjectConfig) -> Result<Injected> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let number = index + 1;
        let mut yaml =
            Yaml::deserialize(document).with_context(|| format!("document {number}: not YAML"))?;
        if yaml.is_null() {
            continue;
        }
        let json: Json = serde_json::to_value(&yaml)
            .with_context(|| format!("document {number}: not a Kubernetes object"))?;
        for path in pod_template_paths(&json, PointerBuf::root()) {
            let note = inject_template(&mut yaml, &json, &path, config)
                .with_context(|| format!("document {number} ({})", describe(&json, &path)))?;
            notes.push(format!("{}: {note}", describe(&json, &path)));
        }
        out.push(serde_yaml::to_string(&yaml).with_context(|| format!("document {number}"))?);
    }
    Ok(Injected {
        yaml: out.join("---\n"),
        notes,
    })
}

/// Where the pod templates of `object` are: the object itself for a Pod, `spec.template` for
/// the workload kinds, and so on.
fn pod_template_paths(object: &Json, at: PointerBuf) -> Vec<PointerBuf> {
    let tokens: &[&str] = match object["kind"].as_str().unwrap_or_default() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "List" => {
            let items = object["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            return items
                .iter()
                .enumerate()
                .flat_map(|(i, item)| {
                    let mut path = at.clone();
                    path.push_back("items");
                    path.push_back(i);
                    pod_template_paths(item, path)
                })
                .collect();
        }
        _ => return Vec::new(),
    };
    let mut path = at;
    for token in tokens {
        path.push_back(*token);
    }
    vec![path]
}

/// Injects the pod template at `path` of the document (`json` is the same document as
/// `yaml`); returns what was done.
fn inject_template(
    yaml: &mut Yaml,
    json: &Json,
    path: &Pointer,
    config: &InjectConfig,
) -> Result<String> {
    let template = path
        .resolve(json)
        .map_err(|_| anyhow!("no pod template at {path}"))?;
    let meta: ObjectMeta = match template.get("metadata") {
        Some(m) => serde_json::from_value(m.clone()).context("metadata")?,
        None => ObjectMeta::default(),
    };
    let spec_json = template
        .get("spec")
        .ok_or_else(|| anyhow!("no pod spec at {path}/spec"))?;
    let spec: PodSpec = serde_json::from_value(spec_json.clone()).context("pod spec")?;
    let injection = match plan(&meta, &spec, config) {
        Ok(injection) => injection,
        Err(skip) => return Ok(format!("skipped ({skip})")),
    };
    // Apply the webhook's own patch to a copy of the spec, then carry the two fields it
    // changed back into the YAML, which keeps the user's key order.
    let mut patched = json.clone();
    json_patch::patch(&mut patched, &injection.patch(path, &spec)).context("applying the patch")?;
    for field in ["initContainers", "volumes"] {
        let mut field_path = path.to_buf();
        field_path.push_back("spec");
        field_path.push_back(field);
        let value = field_path
            .resolve(&patched)
            .map_err(|_| anyhow!("the patch did not set {field_path}"))?;
        set(yaml, &field_path, serde_yaml::to_value(value)?)?;
    }
    let mut note = "injected".to_string();
    for warning in injection.warnings {
        note.push_str("; ");
        note.push_str(&warning);
    }
    Ok(note)
}

/// Sets the YAML value at `path`, which exists up to its last token.
fn set(doc: &mut Yaml, path: &Pointer, value: Yaml) -> Result<()> {
    let (parent, last) = path
        .split_back()
        .ok_or_else(|| anyhow!("cannot replace the whole document"))?;
    let mut node = doc;
    for token in parent.tokens() {
        let key = token.decoded();
        node = match node {
            Yaml::Sequence(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            Yaml::Mapping(map) => map.get_mut(key.as_ref()),
            _ => None,
        }
        .ok_or_else(|| anyhow!("{path}: missing {key}"))?;
    }
    let Yaml::Mapping(map) = node else {
        return Err(anyhow!("{path}: parent is not a mapping"));
    };
    map.insert(Yaml::String(last.decoded().into_owned()), value);
    Ok(())
}

/// `Deployment shop/frontend`, with the item path inside a List.
fn describe(document: &Json, template: &Pointer) -> String {
    // The object owning a template is the document itself or a List item (`/items/N`).
    let owner = match template
        .tokens()
        .take(2)
        .map(|t| t.decoded().into_owned())
        .collect::<Vec<_>>()
        .as_slice()
    {
        [items, index] if items == "items" && document["kind"] == "List" => {
            &document["items"][index.parse::<usize>().unwrap_or(usize::MAX)]
        }
        _ => document,
    };
    let name = owner["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    match owner["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{} {ns}/{name}", owner["kind"].as_str().unwrap_or("object")),
        None => format!("{} {name}", owner["kind"].as_str().unwrap_or("object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  template:
    metadata:
      labels: {app: backend}
      annotations: {plexus.io/log-level: debug}
    spec:
      containers: [{name: backend, image: "backend:0.1.0"}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      initContainers: [{name: prepare, image: "db:1"}]
      volumes: [{name: data, emptyDir: {}}]
      containers: [{name: db, image: "db:1"}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: "agent:1"}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: "backend:0.1.0"}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: "report:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug}
spec:
  containers: [{name: shell, image: "busybox:1"}]
"#;

    fn docs(yaml: &str) -> Vec<Json> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_json::to_value(Yaml::deserialize(d).unwrap()).unwrap())
            .collect()
    }

    fn init_names(doc: &Json, template: &str) -> Vec<String> {
        doc.pointer(&format!("{template}/spec/initContainers"))
            .and_then(Json::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_workload_kind_gets_the_proxy_and_other_kinds_pass_through() {
        let out = inject_with_notes(WORKLOADS, &InjectConfig::default()).unwrap();
        let before = docs(WORKLOADS);
        let after = docs(&out.yaml);
        assert_eq!(after.len(), 7);
        assert_eq!(after[0], before[0], "the Service is unchanged");
        for (i, template) in [
            (1, "/spec/template"),
            (3, "/spec/template"),
            (4, "/spec/template"),
            (5, "/spec/jobTemplate/spec/template"),
            (6, ""),
        ] {
            assert_eq!(
                init_names(&after[i], template),
                ["plexus-init", "plexus-proxy"],
                "document {i}"
            );
        }
        assert_eq!(
            init_names(&after[2], "/spec/template"),
            ["plexus-init", "plexus-proxy", "prepare"]
        );
        let volumes = after[2]
            .pointer("/spec/template/spec/volumes")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(volumes[0]["name"], "data");
        // The token is the only volume added: trust anchors travel inline.
        assert_eq!(volumes[1]["name"], "plexus-identity-token");
        assert_eq!(volumes.len(), 2);
        // The annotation on the template reaches the proxy.
        let env = &after[1]
            .pointer("/spec/template/spec/initContainers/1/env")
            .unwrap();
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "PLEXUS_LOG" && e["value"] == "debug")
        );
        assert_eq!(out.notes.len(), 6, "{:?}", out.notes);
        assert!(
            out.notes[0].starts_with("Deployment shop/backend: injected"),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn injecting_twice_is_the_same_as_once() {
        let once = inject_documents(WORKLOADS, &InjectConfig::default()).unwrap();
        let twice = inject_with_notes(&once, &InjectConfig::default()).unwrap();
        assert_eq!(once, twice.yaml);
        assert!(
            twice
                .notes
                .iter()
                .all(|n| n.ends_with("skipped (already injected)")),
            "{:?}",
            twice.notes
        );
    }

    #[test]
    fn key_order_of_the_input_is_kept() {
        let out = inject_documents(WORKLOADS, &InjectConfig::default()).unwrap();
        let deployment = out.split("---\n").nth(1).unwrap();
        let top: Vec<&str> = deployment.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(
            top,
            [
                "apiVersion: apps/v1",
                "kind: Deployment",
                "metadata:",
                "spec:"
            ]
        );
    }

    #[test]
    fn lists_host_network_and_disabled_templates() {
        let input = r#"
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: a}
  spec: {template: {spec: {containers: [{name: a, image: a}]}}}
- apiVersion: apps/v1
  kind: DaemonSet
  metadata: {name: node}
  spec: {template: {spec: {hostNetwork: true, containers: [{name: n, image: n}]}}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: off}
  spec:
    template:
      metadata: {annotations: {plexus.io/inject: disabled}}
      spec: {containers: [{name: o, image: o}]}
"#;
        let out = inject_with_notes(input, &InjectConfig::default()).unwrap();
        let list = &docs(&out.yaml)[0];
        assert_eq!(
            init_names(list, "/items/0/spec/template"),
            ["plexus-init", "plexus-proxy"]
        );
        assert!(init_names(list, "/items/1/spec/template").is_empty());
        assert!(init_names(list, "/items/2/spec/template").is_empty());
        assert_eq!(
            out.notes,
            [
                "Deployment a: injected",
                "DaemonSet node: skipped (hostNetwork pod)",
                "Deployment off: skipped (plexus.io/inject: disabled on the pod)"
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error_naming_the_document() {
        let err = inject_documents(
            "kind: Service\n---\nkind: [unclosed\n",
            &InjectConfig::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("document 2"), "{err:#}");
        let err = inject_documents(
            "kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            &InjectConfig::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("Deployment x"), "{err:#}");
        assert!(format!("{err:#}").contains("/spec/template"), "{err:#}");
    }
}

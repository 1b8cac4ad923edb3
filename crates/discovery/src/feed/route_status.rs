//! In a cluster: writes each route's `Accepted` and `ResolvedRefs`
//! conditions (and, while a refused generation waits, `PartiallyInvalid`),
//! per Service parent, to the route's status subresource, as Gateway API
//! implementations do. Entries
//! of other controllers in `status.parents` are kept; a status already as
//! desired is not written again (so our own write, coming back as a
//! MODIFIED event, does not loop).

use std::collections::HashMap;
use std::time::Duration;

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::index::{
    CONDITION_PARTIALLY_INVALID, CONDITION_RESOLVED_REFS, CONTROLLER_NAME, Kind, ObjectRef,
    REASON_UNSUPPORTED_VALUE, RouteStatus, SharedIndex,
};

/// A failed write is tried again after this long (or at the next change).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Writes route statuses whenever the index's change, until the task is dropped.
pub async fn run(client: Client, index: SharedIndex) {
    let mut changes = index.lock().watch_route_statuses();
    // What was last written per route (without timestamps), to skip rewrites.
    let mut written: HashMap<(Kind, ObjectRef), Value> = HashMap::new();
    loop {
        let statuses = index.lock().route_statuses();
        let now = serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null);
        let mut failed = false;
        for status in &statuses {
            let Some(parents) = desired_parents(status, &now) else {
                continue;
            };
            let key = (status.kind, status.route.clone());
            let comparable = without_times(&parents);
            if written.get(&key) == Some(&comparable) {
                continue;
            }
            match write(&client, status, parents).await {
                Ok(()) => {
                    written.insert(key, comparable);
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(kind = %status.kind, route = %status.route, %error, "route status not written");
                }
            }
        }
        written.retain(|(kind, route), _| {
            statuses
                .iter()
                .any(|s| s.kind == *kind && &s.route == route)
        });
        if failed {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY_AFTER) => {}
            }
        } else if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn write(
    client: &Client,
    status: &RouteStatus,
    parents: Vec<Value>,
) -> Result<(), kube::Error> {
    let patch = Patch::Merge(json!({"status": {"parents": parents}}));
    let params = PatchParams::default();
    let (namespace, name) = (&status.route.namespace, &status.route.name);
    match status.kind {
        Kind::HttpRoute => {
            Api::<HttpRoute>::namespaced(client.clone(), namespace)
                .patch_status(name, &params, &patch)
                .await?;
        }
        Kind::GrpcRoute => {
            Api::<GrpcRoute>::namespaced(client.clone(), namespace)
                .patch_status(name, &params, &patch)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The `status.parents` the route should have: other controllers' entries as
/// they are, then ours. `None` when the route already has exactly that.
///
/// Ours carry `Accepted` per Service parent, and beside `Accepted=True`,
/// `ResolvedRefs` of the served generation. While the newest generation is
/// refused and an earlier one is served (Gateway API's "Fall Back"), a parent
/// that still routes by the earlier one is `Accepted=True` for *that*
/// generation, and `PartiallyInvalid=True` (reason `UnsupportedValue`, message
/// "Fall Back: …" naming every bad field) for the newest.
pub fn desired_parents(status: &RouteStatus, now: &Value) -> Option<Vec<Value>> {
    let ours = |entry: &&Value| entry["controllerName"] == CONTROLLER_NAME;
    let mut desired: Vec<Value> = status
        .existing
        .iter()
        .filter(|e| !ours(e))
        .cloned()
        .collect();
    for parent in &status.parents {
        // Keep a transition time while the condition's status stays the same.
        let condition =
            |kind: &str, value: &str, reason: &str, message: &str, generation: Option<i64>| {
                let previous = status
                    .existing
                    .iter()
                    .filter(ours)
                    .filter(|e| e["parentRef"] == parent.parent_ref)
                    .flat_map(|e| e["conditions"].as_array().into_iter().flatten())
                    .find(|c| c["type"] == kind && c["status"] == value);
                let since =
                    previous.map_or_else(|| now.clone(), |c| c["lastTransitionTime"].clone());
                json!({
                    "type": kind,
                    "status": value,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": generation.unwrap_or(0),
                    "lastTransitionTime": since,
                })
            };
        let falls_back = parent.accepted && status.refused.is_some();
        let accepted = |value: &str, generation: Option<i64>| {
            condition(
                "Accepted",
                value,
                &parent.reason,
                &parent.message,
                generation,
            )
        };
        let mut conditions = vec![match (parent.accepted, falls_back) {
            (true, true) => accepted("True", status.served_generation),
            (true, false) => accepted("True", status.generation),
            (false, _) => accepted("False", status.generation),
        }];
        if let Some(refs) = status.resolved_refs.as_ref().filter(|_| parent.accepted) {
            conditions.push(condition(
                CONDITION_RESOLVED_REFS,
                if refs.resolved { "True" } else { "False" },
                &refs.reason,
                &refs.message,
                status.served_generation,
            ));
        }
        if falls_back {
            conditions.push(condition(
                CONDITION_PARTIALLY_INVALID,
                "True",
                REASON_UNSUPPORTED_VALUE,
                &parent.message,
                status.generation,
            ));
        }
        desired.push(json!({
            "parentRef": parent.parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions,
        }));
    }
    (desired != status.existing).then_some(desired)
}

fn without_times(parents: &[Value]) -> Value {
    let mut parents = Value::Array(parents.to_vec());
    for entry in parents.as_array_mut().into_iter().flatten() {
        for condition in entry["conditions"].as_array_mut().into_iter().flatten() {
            if let Some(c) = condition.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    parents
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, IndexConfig};

    fn refused_route() -> HttpRoute {
        serde_json::from_value(json!({
            "metadata": {"namespace": "other", "name": "r", "generation": 3},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "namespace": "shop"}]},
            "status": {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "example.com/gateway",
                                    "conditions": []}]},
        }))
        .unwrap()
    }

    #[test]
    fn ours_are_added_beside_other_controllers_and_not_rewritten() {
        let mut index = Index::new(IndexConfig::default());
        index.apply(refused_route());
        let status = index.route_statuses().remove(0);
        let now = json!("2026-11-21T06:00:00Z");
        let parents = desired_parents(&status, &now).expect("a status to write");
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0]["controllerName"], "example.com/gateway");
        let ours = &parents[1];
        assert_eq!(ours["controllerName"], CONTROLLER_NAME);
        assert_eq!(ours["parentRef"]["namespace"], "shop");
        let condition = &ours["conditions"][0];
        assert_eq!(
            (condition["type"].as_str(), condition["status"].as_str()),
            (Some("Accepted"), Some("False"))
        );
        assert_eq!(condition["reason"], "NotAllowedByParent");
        assert_eq!(condition["observedGeneration"], 3);

        // The object comes back with that status: nothing more to write, even later.
        let mut written = refused_route();
        written.status = serde_json::from_value(json!({"parents": parents})).unwrap();
        index.apply(written);
        let status = index.route_statuses().remove(0);
        assert_eq!(
            desired_parents(&status, &json!("2026-11-21T07:00:00Z")),
            None
        );
    }

    #[test]
    fn a_refused_generation_falls_back_to_the_served_one() {
        let route = |generation: i64, rules: Value| -> HttpRoute {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": "split", "generation": generation},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                         "rules": rules},
            }))
            .unwrap()
        };
        let mut index = Index::new(IndexConfig::default());
        index.apply(route(
            4,
            json!([{"backendRefs": [{"name": "web", "port": 80}]}]),
        ));
        index.apply(route(
            5,
            json!([{"backendRefs": [{"name": "web", "port": 0}]}]),
        ));
        let status = index.route_statuses().remove(0);
        let parents = desired_parents(&status, &json!("2026-11-21T06:00:00Z")).unwrap();
        let conditions = parents[0]["conditions"].as_array().unwrap();
        let accepted = &conditions[0];
        assert_eq!(
            (
                &accepted["type"],
                &accepted["status"],
                &accepted["observedGeneration"]
            ),
            (&json!("Accepted"), &json!("True"), &json!(4)),
            "accepted, for the generation served"
        );
        let resolved = &conditions[1];
        assert_eq!(
            (&resolved["type"], &resolved["status"], &resolved["reason"]),
            (
                &json!("ResolvedRefs"),
                &json!("False"),
                &json!("BackendNotFound")
            ),
            "the served generation's backendRef names a Service the index lacks"
        );
        assert_eq!(
            resolved["observedGeneration"], 4,
            "of the generation served"
        );
        assert_eq!(
            resolved["message"],
            "spec.rules[0].backendRefs[0]: Service shop/web does not exist"
        );
        let invalid = &conditions[2];
        assert_eq!(
            (&invalid["type"], &invalid["status"], &invalid["reason"]),
            (
                &json!("PartiallyInvalid"),
                &json!("True"),
                &json!("UnsupportedValue")
            )
        );
        assert_eq!(invalid["observedGeneration"], 5);
        let message = invalid["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "Fall Back: generation 5 refused (spec.rules[0].backendRefs[0].port: "
            ),
            "{message}"
        );
        assert!(
            message.ends_with("generation 4 stays in force"),
            "{message}"
        );
    }
}

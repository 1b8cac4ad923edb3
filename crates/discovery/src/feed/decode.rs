//! Reading an object into its kind's type, naming every bad field. serde stops
//! at the first error; so when an object does not read, its bad field is
//! taken out and the object read again, until the rest reads or the error
//! names no field that can be taken out. Both feeds read through here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::index::{Kind, ObjectRef, Problem, Unreadable};

/// Bad fields looked for in one object at most.
const MAX_FIELD_ERRORS: usize = 32;

/// A bad field (`spec.ports[0].port`; empty when serde names none) and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// `value` as a `T`, or every bad field found (at least one).
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, Vec<FieldError>> {
    let first = match T::deserialize(value) {
        Ok(object) => return Ok(object),
        Err(e) => e,
    };
    let mut errors = bad_fields::<T>(value.clone());
    if errors.is_empty() {
        // Read through the value but not through text: keep serde's own word.
        errors.push(FieldError {
            field: String::new(),
            message: first.to_string(),
        });
    }
    Err(errors)
}

/// As [`decode`], for a JSON value (the API server's).
pub fn decode_json<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, Vec<FieldError>> {
    let first = match T::deserialize(value) {
        Ok(object) => return Ok(object),
        Err(e) => e,
    };
    // Only serde_yaml's errors carry the path of the bad field.
    let errors = match serde_yaml::to_value(value) {
        Ok(yaml) => decode::<T>(&yaml).err().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if errors.is_empty() {
        return Err(vec![FieldError {
            field: String::new(),
            message: first.to_string(),
        }]);
    }
    Err(errors)
}

/// The object named by `value` (kind `kind`), refused for `errors`.
pub fn unreadable(kind: Kind, value: &serde_json::Value, errors: Vec<FieldError>) -> Unreadable {
    let meta = &value["metadata"];
    let text = |key: &str| meta[key].as_str().map(str::to_string);
    let meta = ObjectMeta {
        namespace: text("namespace"),
        name: text("name"),
        resource_version: text("resourceVersion"),
        generation: meta["generation"].as_i64(),
        ..ObjectMeta::default()
    };
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let key = ObjectRef::of(&meta);
    Unreadable {
        kind,
        problems: problems(kind, &key, errors),
        meta,
        parent_refs: list(&value["spec"]["parentRefs"]),
        status_parents: list(&value["status"]["parents"]),
    }
}

pub fn problems(kind: Kind, key: &ObjectRef, errors: Vec<FieldError>) -> Vec<Problem> {
    errors
        .into_iter()
        .map(|e| Problem::new(kind, key, e.field, e.message))
        .collect()
}

/// Reads `value` through text (so serde_yaml's errors name the field), taking
/// each bad field out, until it reads.
fn bad_fields<T: DeserializeOwned>(mut value: Value) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut taken_out: Vec<String> = Vec::new();
    while errors.len() < MAX_FIELD_ERRORS {
        let Ok(text) = serde_yaml::to_string(&value) else {
            break;
        };
        let Err(e) = serde_yaml::from_str::<T>(&text) else {
            break;
        };
        let error = field_error(&e.to_string());
        // A required field taken out by this loop is missing: not news.
        let consequence = missing_field(&error.message)
            .map(|name| join(&error.field, name))
            .is_some_and(|path| taken_out.contains(&path));
        if consequence {
            break;
        }
        let removable = !error.field.is_empty() && take_out(&mut value, &error.field);
        if removable {
            taken_out.push(error.field.clone());
        }
        errors.push(error);
        if !removable {
            break;
        }
    }
    errors
}

/// Splits serde_yaml's `path: message at line L column C` (the position is in
/// the re-serialized text, meaningless to the user: dropped).
fn field_error(text: &str) -> FieldError {
    let text = match text.rfind(" at line ") {
        Some(at) if text[at..].contains(" column ") => &text[..at],
        _ => text,
    };
    match text.split_once(": ") {
        Some((field, message)) if !field.contains(' ') => FieldError {
            field: field.to_string(),
            message: message.to_string(),
        },
        _ => FieldError {
            field: String::new(),
            message: text.to_string(),
        },
    }
}

/// `name` of serde's "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn join(path: &str, name: &str) -> String {
    match path {
        "" => name.to_string(),
        _ => format!("{path}.{name}"),
    }
}

/// Removes the map entry at `path` (`a.b[0].c`); `false` when the path ends
/// at a list item (taking it out would renumber the next ones) or is not
/// found. Keys may contain dots (`plexus.io/inject`): each is matched
/// against the keys the map has, the longest first.
fn take_out(value: &mut Value, path: &str) -> bool {
    let mut current = value;
    let mut rest = path;
    loop {
        if let Some(after) = rest.strip_prefix('[') {
            let Some((index, after)) = after.split_once(']') else {
                return false;
            };
            let (Ok(index), Value::Sequence(items)) = (index.parse::<usize>(), current) else {
                return false;
            };
            if after.is_empty() {
                return false;
            }
            let Some(item) = items.get_mut(index) else {
                return false;
            };
            current = item;
            rest = after.strip_prefix('.').unwrap_or(after);
            continue;
        }
        let Value::Mapping(map) = current else {
            return false;
        };
        let key = map
            .keys()
            .filter_map(Value::as_str)
            .filter(|key| {
                rest.strip_prefix(key)
                    .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
            })
            .max_by_key(|key| key.len())
            .map(str::to_string);
        let Some(key) = key else {
            return false;
        };
        let after = &rest[key.len()..];
        if after.is_empty() {
            return map.remove(key.as_str()).is_some();
        }
        let Some(next) = map.get_mut(key.as_str()) else {
            return false;
        };
        current = next;
        rest = after.strip_prefix('.').unwrap_or(after);
    }
}

#[cfg(test)]
mod tests {
    use gateway_api::experimental::httproutes::HttpRoute;
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn every_bad_field_is_named_not_only_the_first() {
        let value = yaml(
            "metadata: {name: web, namespace: shop, annotations: {plexus.io/inject: [1]}}
spec:
  ports: [{name: http, port: eighty}, {name: grpc, port: 9090, appProtocol: {h2: true}}]
  clusterIP: 10.96.0.10",
        );
        let errors = decode::<Service>(&value).expect_err("bad fields");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations.plexus.io/inject",
                "spec.ports[0].port",
                "spec.ports[1].appProtocol"
            ],
            "{errors:?}"
        );
        assert!(
            errors[1]
                .message
                .starts_with("invalid type: string \"eighty\""),
            "{errors:?}"
        );
        assert!(!errors[1].message.contains("line"), "{errors:?}");
    }

    #[test]
    fn an_unknown_enum_value_is_named_and_a_missing_field_ends_the_search() {
        let value = yaml(
            "metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service}]
  rules: [{matches: [{path: {type: Prefix, value: /}}]}]",
        );
        let errors = decode::<HttpRoute>(&value).expect_err("bad fields");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        // The item missing its name cannot be taken out (the items after it
        // would be renumbered): the search stops there.
        assert_eq!(fields, ["spec.parentRefs[0]"], "{errors:?}");
        assert!(
            errors[0].message.contains("missing field `name`"),
            "{errors:?}"
        );

        let value = yaml(
            "metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: web}]
  rules: [{matches: [{path: {type: Prefix, value: /}}, {method: FETCH}]}]",
        );
        let errors = decode::<HttpRoute>(&value).expect_err("bad fields");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].matches[0].path.type",
                "spec.rules[0].matches[1].method"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn a_required_field_taken_out_is_not_reported_again() {
        // `spec` is required: taking out the bad `spec` must not add "missing field `spec`".
        let errors = decode::<HttpRoute>(&yaml("metadata: {name: r}\nspec: 3")).expect_err("bad");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec");
    }

    #[test]
    fn json_objects_are_read_the_same_way() {
        let value = serde_json::json!({
            "metadata": {"name": "r", "namespace": "shop", "generation": 4},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                     "rules": [{"filters": [{"type": "RateLimit"}]}]},
        });
        let errors = decode_json::<HttpRoute>(&value).expect_err("unknown filter type");
        assert_eq!(
            errors[0].field, "spec.rules[0].filters[0].type",
            "{errors:?}"
        );
        let object = unreadable(Kind::HttpRoute, &value, errors);
        assert_eq!(object.key(), ObjectRef::new("shop", "r"));
        assert_eq!(object.meta.generation, Some(4));
        assert_eq!(object.parent_refs.len(), 1);
        assert_eq!(object.problems[0].object, "shop/r");
    }
}

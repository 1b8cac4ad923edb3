//! The static destinations file (`PLEXUS_STATIC_CONFIG`), used until the
//! controller feeds the proxy.
//!
//! ```yaml
//! destinations:
//!   - aliases: ["web.default.svc.cluster.local:80", "web:80", "10.96.0.10:80"]
//!     target:            # plexus.v1.Target, in the proto's shape
//!       name: web.default.svc.cluster.local:80
//!       routes: { default_backend: web }
//!       backends:
//!         backends:
//!           web: { name: web.default.svc.cluster.local:80,
//!                  endpoints: [{ address: "10.0.0.7:8080", ready: true }] }
//! ```
//!
//! A version of the file is used only when all of it is good: no unknown
//! field anywhere, values of the right types, valid and unique aliases and
//! target names, endpoint addresses, backend references, and every route
//! rule compiled as the proxy compiles it. Each problem names its field
//! (`destinations[0].target.routes.http[0].rules[1].matches[0].path.type`),
//! all of them at once (a value of the wrong type stops the reading, so
//! only the first of those). A bad file stops the proxy at start.
//!
//! The file is polled for new versions, as the controller's file feed polls
//! its file: a good one replaces the destinations (targets change under the
//! connections that use them), a bad one is logged with its problems and the
//! last good version stays in force.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use plexus_api::v1::Target;
use plexus_core::FileVersion;
use serde::Deserialize;

use crate::destinations::{FixedDestinations, authority_key};
use crate::logical;

/// How often the file is checked for a new version.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Every problem found, each naming the entry and the field.
    #[error("{path}: {}", list(.problems))]
    Invalid { path: String, problems: Vec<String> },
}

/// One problem as is, several one per line.
fn list(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        all => {
            let mut text = format!("{} problems:", all.len());
            for problem in all {
                // Writing into a String cannot fail.
                let _ = write!(text, "\n  {problem}");
            }
            text
        }
    }
}

// No `deny_unknown_fields`: unknown fields are collected by `serde_ignored`,
// all of them, here and inside the proto's types. A file that is no map at
// all has no position to report: the problem then says what was expected.
#[derive(Deserialize)]
#[serde(expecting = "a map with `destinations`")]
struct File {
    #[serde(default)]
    destinations: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    aliases: Vec<String>,
    target: Target,
}

/// The targets of a good file, each with its normalised aliases.
pub type Entries = Vec<(Vec<String>, Target)>;

/// Reads and checks the file at `path`, then keeps following it: a new good
/// version replaces the destinations, a bad one is logged and ignored. The
/// following ends when the destinations are dropped. Must run inside the
/// tokio runtime.
pub fn load_and_follow(path: &Path) -> Result<Arc<FixedDestinations>, StaticConfigError> {
    // The version before the text: a write in between is seen at the next poll.
    let version = std::fs::metadata(path).map(|m| FileVersion::of(&m)).ok();
    let bytes = std::fs::read(path).map_err(|source| read_error(path, source))?;
    let entries = check(path, &bytes)?;
    let destinations = Arc::new(FixedDestinations::new(entries));
    tokio::spawn(follow(
        path.to_owned(),
        version,
        Arc::downgrade(&destinations),
    ));
    Ok(destinations)
}

fn read_error(path: &Path, source: std::io::Error) -> StaticConfigError {
    StaticConfigError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// `bytes` (the file at `path`) checked.
fn check(path: &Path, bytes: &[u8]) -> Result<Entries, StaticConfigError> {
    let problems = match std::str::from_utf8(bytes) {
        Ok(text) => match parse(text) {
            Ok(entries) => return Ok(entries),
            Err(problems) => problems,
        },
        Err(e) => vec![format!("not UTF-8 text: {e}")],
    };
    Err(StaticConfigError::Invalid {
        path: path.display().to_string(),
        problems,
    })
}

/// Polls the file every [`POLL_INTERVAL`] while `destinations` lives and
/// applies each new good version. Each refusal is logged once per version;
/// an unreadable file once until it is readable again.
async fn follow(
    path: PathBuf,
    mut seen: Option<FileVersion>,
    destinations: Weak<FixedDestinations>,
) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable = false;
    loop {
        interval.tick().await;
        let Some(destinations) = destinations.upgrade() else {
            return;
        };
        let read = async {
            let version = FileVersion::of(&tokio::fs::metadata(&path).await?);
            if seen == Some(version) {
                return Ok(None);
            }
            let bytes = tokio::fs::read(&path).await?;
            Ok::<_, std::io::Error>(Some((version, bytes)))
        };
        let (version, bytes) = match read.await {
            Ok(Some(new)) => new,
            Ok(None) => continue,
            Err(error) => {
                if !std::mem::replace(&mut unreadable, true) {
                    tracing::warn!(path = %path.display(), %error,
                        "static file: cannot read it; keeping the last good destinations");
                }
                // Read again whatever comes back, even the same version.
                seen = None;
                continue;
            }
        };
        unreadable = false;
        seen = Some(version);
        match check(&path, &bytes) {
            Ok(entries) => {
                let targets = entries.len();
                destinations.replace(entries);
                tracing::info!(path = %path.display(), targets, "static file: new version applied");
            }
            Err(error) => tracing::warn!(%error,
                "static file: new version refused; keeping the last good destinations"),
        }
    }
}

/// Parses and checks the file's text; every problem names the entry and
/// field at fault.
pub fn parse(text: &str) -> Result<Entries, Vec<String>> {
    if text.trim().is_empty() {
        // What an editor writing in place leaves for a moment.
        return Err(vec![
            "the file is empty (`destinations: []` is a file without destinations)".to_owned(),
        ]);
    }
    let mut problems = Vec::new();
    let parsed: Result<File, _> =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |path| {
            problems.push(format!("{}: unknown field", field_path(&path)));
        });
    let file = match parsed {
        Ok(file) => file,
        Err(e) => {
            problems.push(yaml_problem(&e));
            return Err(problems);
        }
    };
    let mut entries = Vec::with_capacity(file.destinations.len());
    let mut seen_aliases = std::collections::HashSet::new();
    let mut seen_names = std::collections::HashMap::new();
    for (i, entry) in file.destinations.into_iter().enumerate() {
        let at = format!("destinations[{i}]");
        let mut aliases = Vec::with_capacity(entry.aliases.len());
        for (j, alias) in entry.aliases.iter().enumerate() {
            match authority_key(alias) {
                None => problems.push(format!(
                    "{at}.aliases[{j}]: {alias:?} is not host:port or ip:port"
                )),
                Some(key) if !seen_aliases.insert(key.clone()) => {
                    problems.push(format!("{at}.aliases[{j}]: {alias:?} is already used"))
                }
                Some(key) => aliases.push(key),
            }
        }
        let mut target = entry.target;
        match entry.aliases.first() {
            None => problems.push(format!("{at}.aliases: at least one alias is required")),
            Some(first) if target.name.is_empty() => target.name = first.clone(),
            Some(_) => {}
        }
        // Connections share one `Logical` per target name.
        if let Some(other) = seen_names.insert(target.name.clone(), i) {
            problems.push(format!(
                "{at}.target.name: {:?} is already the name of destinations[{other}]",
                target.name
            ));
        }
        problems.extend(
            check_target(&target)
                .into_iter()
                .map(|e| format!("{at}.target.{e}")),
        );
        entries.push((aliases, target));
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

/// The reader's message with its position: some messages (a syntax error at
/// the file's first character, `: `) carry none of their own, and those
/// about the whole file (several documents) have none to carry.
fn yaml_problem(error: &serde_yaml::Error) -> String {
    let message = error.to_string();
    match error.location() {
        _ if message.contains(" at line ") => message,
        Some(at) => format!("{message} at line {} column {}", at.line(), at.column()),
        None => format!("the file: {message}"),
    }
}

/// `destinations[0].target.routes.retriez`: a path as the file spells it.
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// What the proxy would otherwise only discover per request, or skip.
fn check_target(target: &Target) -> Vec<String> {
    let mut problems = Vec::new();
    let backends = target.backends.as_ref().map(|t| &t.backends);
    let Some(backends) = backends.filter(|b| !b.is_empty()) else {
        return vec!["backends.backends: at least one backend is required".to_owned()];
    };
    for (name, backend) in backends {
        for (k, endpoint) in backend.endpoints.iter().enumerate() {
            if endpoint.address.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "backends.backends[{name:?}].endpoints[{k}].address: {:?} is not ip:port",
                    endpoint.address
                ));
            }
        }
    }
    let routes = target.routes.clone().unwrap_or_default();
    let known = |backend: &str| backends.contains_key(backend);
    if !routes.default_backend.is_empty() && !known(&routes.default_backend) {
        problems.push(format!(
            "routes.default_backend: {:?} is not in backends.backends",
            routes.default_backend
        ));
    }
    let http = routes
        .http
        .iter()
        .map(|r| r.rules.iter().map(|r| &r.backends).collect::<Vec<_>>());
    let grpc = routes
        .grpc
        .iter()
        .map(|r| r.rules.iter().map(|r| &r.backends).collect::<Vec<_>>());
    let kinds = http
        .enumerate()
        .map(|(i, rules)| ("http", i, rules))
        .chain(grpc.enumerate().map(|(i, rules)| ("grpc", i, rules)));
    for (kind, i, rules) in kinds {
        for (r, refs) in rules.iter().enumerate() {
            for (b, reference) in refs.iter().enumerate() {
                // An unresolved reference names no backend of the table: its share gets 500.
                if reference.unresolved.is_empty() && !known(&reference.backend) {
                    problems.push(format!(
                        "routes.{kind}[{i}].rules[{r}].backends[{b}].backend: {:?} is not in backends.backends",
                        reference.backend
                    ));
                }
            }
        }
    }
    for (i, route) in routes.http.iter().enumerate() {
        for (r, rule) in route.rules.iter().enumerate() {
            let mirrors = rule.filters.iter().flat_map(|f| &f.request_mirrors);
            for (m, mirror) in mirrors.enumerate() {
                if mirror.unresolved.is_empty() && !known(&mirror.backend) {
                    problems.push(format!(
                        "routes.http[{i}].rules[{r}].filters.request_mirrors[{m}].backend: {:?} is not in backends.backends",
                        mirror.backend
                    ));
                }
            }
        }
    }
    problems.extend(logical::check(target));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
destinations:
  - aliases: ["web.default.svc.cluster.local:80", "web", "10.96.0.10:80"]
    target:
      routes:
        default_backend: web
        http:
          - name: default/web-split
            rules:
              - matches: [{ path: { type: PathPrefix, value: /api } }]
                backends: [{ backend: web, weight: 90 }, { backend: canary, weight: 10 }]
      backends:
        backends:
          web: { name: web.default.svc.cluster.local:80, endpoints: [{ address: "127.0.0.1:8080", ready: true }] }
          canary: { endpoints: [{ address: "127.0.0.1:8081", ready: true }] }
"#;

    fn problems(text: &str) -> Vec<String> {
        parse(text).expect_err("the file is refused")
    }

    #[test]
    fn a_good_file_is_read_in_the_protos_shape() {
        let entries = parse(GOOD).unwrap();
        assert_eq!(entries.len(), 1);
        let (aliases, target) = &entries[0];
        assert_eq!(aliases[1], "web:80");
        // An empty name defaults to the first alias.
        assert_eq!(target.name, "web.default.svc.cluster.local:80");
        let routes = target.routes.as_ref().unwrap();
        assert_eq!(routes.http[0].rules[0].backends[1].weight, Some(10));
        let backends = &target.backends.as_ref().unwrap().backends;
        assert_eq!(backends["canary"].endpoints[0].address, "127.0.0.1:8081");
    }

    #[test]
    fn errors_name_the_entry_and_field() {
        let bad_addr = GOOD.replace("127.0.0.1:8081", "not-an-address");
        assert_eq!(
            problems(&bad_addr),
            [
                "destinations[0].target.backends.backends[\"canary\"].endpoints[0].address: \
              \"not-an-address\" is not ip:port"
            ]
        );

        let bad_ref = GOOD.replace("backend: canary", "backend: nope");
        assert_eq!(
            problems(&bad_ref),
            [
                "destinations[0].target.routes.http[0].rules[0].backends[1].backend: \
              \"nope\" is not in backends.backends"
            ]
        );

        let bad_alias = GOOD.replace("\"web\",", "\"web:port\",");
        let found = problems(&bad_alias);
        assert!(
            found[0].starts_with("destinations[0].aliases[1]: "),
            "{found:?}"
        );

        let bad_type = GOOD.replace("weight: 90", "weight: lots");
        let found = problems(&bad_type);
        assert!(
            found[0].contains("destinations[0].target.routes.http[0].rules[0].backends[0].weight"),
            "{found:?}"
        );
    }

    #[test]
    fn every_unknown_field_is_named_with_its_path() {
        let typos = GOOD
            .replace(
                "default_backend: web",
                "default_backend: web\n        retriez: 3",
            )
            .replace(
                "ready: true }] }\n          canary",
                "ready: true, zone_: a }] }\n          canary",
            )
            .replace("aliases:", "alias: []\n    aliases:");
        assert_eq!(
            problems(&typos),
            [
                "destinations[0].alias: unknown field",
                "destinations[0].target.routes.retriez: unknown field",
                "destinations[0].target.backends.backends.web.endpoints[0].zone_: unknown field",
            ]
        );

        // A missing required field, and the unknown one that was meant.
        let found = problems(&GOOD.replace("aliases:", "alias:"));
        assert_eq!(found[0], "destinations[0].alias: unknown field");
        assert!(found[1].contains("missing field `aliases`"), "{found:?}");
    }

    #[test]
    fn every_rule_is_compiled_and_all_problems_come_at_once() {
        let bad = GOOD
            .replace("type: PathPrefix", "type: Prefix")
            .replace("backend: canary", "backend: nope")
            .replace(
                "canary: { endpoints",
                "canary: { resilience: { load_balancer: random }, endpoints",
            );
        let found = problems(&bad);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found.iter().any(|p| p.starts_with(
                "destinations[0].target.routes.http[0].rules[0].matches[0].path.type: \
                 unknown path match type \"Prefix\""
            )),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with(
                "destinations[0].target.backends.backends[\"canary\"].resilience.load_balancer: "
            )),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("routes.http[0].rules[0].backends[1].backend")),
            "{found:#?}"
        );
    }

    #[test]
    fn consistent_hashing_is_read_and_a_bad_key_named() {
        let hashed = |key: &str| {
            GOOD.replace(
                "canary: { endpoints",
                &format!(
                    "canary: {{ resilience: {{ load_balancer: consistent-hash, hash_key: \"{key}\" }}, endpoints"
                ),
            )
        };
        let entries = parse(&hashed("header:x-user")).unwrap();
        let resilience = entries[0].1.backends.as_ref().unwrap().backends["canary"]
            .resilience
            .clone()
            .unwrap();
        assert_eq!(
            (
                resilience.load_balancer.as_str(),
                resilience.hash_key.as_str()
            ),
            ("consistent-hash", "header:x-user")
        );
        assert_eq!(
            problems(&hashed("identity"))[0].split(" (").next(),
            Some(
                "destinations[0].target.backends.backends[\"canary\"].resilience.hash_key: \
                 \"identity\" is not a key the balancing proxy can read"
            )
        );
    }

    #[test]
    fn success_rate_values_out_of_range_are_named() {
        let bad = GOOD.replace(
            "canary: { endpoints",
            "canary: { resilience: { failure_accrual: { success_rate: { threshold: 1.5, min_requests: 0 } } }, endpoints",
        );
        let prefix = "destinations[0].target.backends.backends[\"canary\"].resilience.failure_accrual.success_rate.";
        let found = problems(&bad);
        let fields: Vec<&str> = found
            .iter()
            .filter_map(|p| p.strip_prefix(prefix)?.split(':').next())
            .collect();
        assert_eq!(fields, ["min_requests", "threshold"], "{found:#?}");
    }

    #[test]
    fn rule_filters_are_read_and_each_bad_one_named() {
        let filters = "backends: [{ backend: web, weight: 90 }, { backend: canary, weight: 10 }]\n                \
                       filters:\n                  \
                       request_header_modifier: { set: [{ name: X-Env, value: prod }], remove: [x-secret] }\n                  \
                       response_header_modifier: { add: [{ name: x-served-by, value: plexus }] }\n                  \
                       request_redirect: { scheme: https, port: 8443, status_code: 301, path: { type: ReplacePrefixMatch, value: /v2 } }";
        let good = GOOD.replace(
            "backends: [{ backend: web, weight: 90 }, { backend: canary, weight: 10 }]",
            filters,
        );
        let entries = parse(&good).unwrap();
        let rule = &entries[0].1.routes.as_ref().unwrap().http[0].rules[0];
        let read = rule.filters.as_ref().expect("filters");
        assert_eq!(
            read.request_redirect.as_ref().map(|r| r.port),
            Some(Some(8443))
        );

        let bad = good
            .replace("status_code: 301", "status_code: 308")
            .replace("filters:", "filters:\n                  url_rewrites: {}");
        assert_eq!(
            problems(&bad),
            [
                "destinations[0].target.routes.http[0].rules[0].filters.url_rewrites: unknown field",
                "destinations[0].target.routes.http[0].rules[0].filters.request_redirect.status_code: \
                 308 is not supported (301 or 302)",
            ]
        );
        let rewriting = good.replace(
            "request_redirect: { scheme: https, port: 8443, status_code: 301, path: { type: ReplacePrefixMatch, value: /v2 } }",
            "url_rewrite: { hostname: new.example, path: { type: ReplaceFullPath, value: /v2 } }\n                  \
             request_mirrors: [{ backend: canary, fraction: { numerator: 1, denominator: 4 } }]",
        );
        let entries = parse(&rewriting).unwrap();
        let rule = &entries[0].1.routes.as_ref().unwrap().http[0].rules[0];
        let read = rule.filters.as_ref().expect("filters");
        assert_eq!(
            read.url_rewrite.as_ref().map(|r| r.hostname.as_str()),
            Some("new.example")
        );
        assert_eq!(
            read.request_mirrors[0]
                .fraction
                .as_ref()
                .map(|f| f.denominator),
            Some(4)
        );
        let unknown_mirror = rewriting
            .replace("backend: canary, fraction", "backend: nope, fraction")
            .replace("denominator: 4", "denominator: 0");
        assert_eq!(
            problems(&unknown_mirror),
            [
                "destinations[0].target.routes.http[0].rules[0].filters.request_mirrors[0].backend: \
                 \"nope\" is not in backends.backends",
                "destinations[0].target.routes.http[0].rules[0].filters.request_mirrors[0].fraction: \
                 1/0 is not a fraction (0 <= numerator <= denominator, denominator > 0)",
            ]
        );
        let bad_header = good.replace("name: X-Env", "name: \"X Env\"");
        assert_eq!(
            problems(&bad_header),
            [
                "destinations[0].target.routes.http[0].rules[0].filters.request_header_modifier.set[0].name: \
                 invalid header name \"X Env\""
            ]
        );
    }

    #[test]
    fn an_empty_file_and_a_shared_target_name_are_refused() {
        assert!(problems("")[0].contains("empty"));
        assert!(problems(" \n")[0].contains("empty"));
        assert!(parse("destinations: []").unwrap().is_empty());

        let twice = r#"
destinations:
  - aliases: ["a:80"]
    target: { name: shared, backends: { backends: { b: { endpoints: [] } } } }
  - aliases: ["b:80", "A:80"]
    target: { name: shared, backends: { backends: { b: { endpoints: [] } } } }
  - aliases: []
    target: { backends: { backends: { b: { endpoints: [] } } } }
"#;
        assert_eq!(
            problems(twice),
            [
                "destinations[1].aliases[1]: \"A:80\" is already used",
                "destinations[1].target.name: \"shared\" is already the name of destinations[0]",
                "destinations[2].aliases: at least one alias is required",
            ]
        );
    }

    #[test]
    fn several_problems_are_listed_one_per_line() {
        let error = StaticConfigError::Invalid {
            path: "/etc/plexus/static.yaml".into(),
            problems: vec!["a: bad".into(), "b: worse".into()],
        };
        assert_eq!(
            error.to_string(),
            "/etc/plexus/static.yaml: 2 problems:\n  a: bad\n  b: worse"
        );
    }
}

/// Properties of the static file's parser: whatever the file holds, it is
/// refused with named problems or accepted, never a panic; an unknown field
/// is never accepted silently.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// The field names the file knows, so generated trees reach deep into it.
    const FIELDS: &[&str] = &[
        "destinations",
        "aliases",
        "target",
        "name",
        "routes",
        "default_backend",
        "http",
        "grpc",
        "rules",
        "matches",
        "path",
        "type",
        "value",
        "headers",
        "backends",
        "backend",
        "weight",
        "endpoints",
        "address",
        "ready",
        "resilience",
        "load_balancer",
        "hash_key",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
            1 => "[a-z_]{0,8}",
        ]
    }

    /// Any JSON value (JSON is YAML) shaped like the file: maps of known keys.
    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            "[ -~]{0,24}".prop_map(Value::from),
            Just(Value::from("127.0.0.1:8080")),
            Just(Value::from("PathPrefix")),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Lines of YAML-ish tokens: indentation, keys, flow collections, anchors.
    fn yamlish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            key(),
            prop::sample::select(vec![
                ": ", "- ", "[", "]", "{", "}", ", ", "\n", "\n  ", "\n    ", "&a ", "*a",
                "!!str ", "\"", "'", "#", "---\n", "|\n", "~", "1e999", "-1", "0x10",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,6}",
        ];
        prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
    }

    /// A refusal lists at least one problem, each saying where it is.
    fn check_refusal(result: Result<Entries, Vec<String>>) -> Result<(), TestCaseError> {
        if let Err(problems) = result {
            prop_assert!(!problems.is_empty());
            for problem in &problems {
                let placed = problem.contains(" at line ")
                    || problem.starts_with("destinations")
                    || problem.ends_with(": unknown field")
                    || problem.contains("`destinations`")
                    || problem.starts_with("the file");
                prop_assert!(placed, "{:?} names no field or position", problem);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(plexus_core::property::config())]

        #[test]
        fn any_text_is_refused_with_named_problems_or_accepted(text in yamlish()) {
            check_refusal(parse(&text))?;
        }

        #[test]
        fn any_value_is_refused_with_named_problems_or_accepted(value in tree()) {
            check_refusal(parse(&value.to_string()))?;
            check_refusal(parse(&serde_json::json!({ "destinations": [value] }).to_string()))?;
        }

        /// Whatever its value, an unknown field (proto fields never end in
        /// `_`) anywhere in a good file refuses it, by its path.
        #[test]
        fn an_unknown_field_is_never_accepted(
            name in "[a-z][a-z0-9_]{0,10}_",
            value in tree(),
            place in 0..4usize,
        ) {
            let mut file: Value = serde_yaml::from_str(super::tests::GOOD).expect("GOOD is YAML");
            let (path, at) = match place {
                0 => ("", &mut file),
                1 => ("destinations[0].", &mut file["destinations"][0]),
                2 => ("destinations[0].target.routes.", &mut file["destinations"][0]["target"]["routes"]),
                _ => (
                    "destinations[0].target.backends.backends.web.endpoints[0].",
                    &mut file["destinations"][0]["target"]["backends"]["backends"]["web"]["endpoints"][0],
                ),
            };
            at.as_object_mut().expect("a map").insert(name.clone(), value);
            let problems = parse(&file.to_string()).expect_err("an unknown field is refused");
            let expected = format!("{path}{name}: unknown field");
            prop_assert!(problems.contains(&expected), "{:?} lacks {:?}", problems, expected);
        }
    }
}

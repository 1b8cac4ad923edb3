//! The Gateway API CRDs: present, and from a bundle whose HTTPRoute keeps
//! `retry`. That field is experimental (since v1.2): the standard channel's
//! CRD has no such field, so the API server prunes it from every route and
//! retries silently never happen.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use super::{CheckResult, GATEWAY_API};

/// The Gateway API kinds the controller watches.
pub const GATEWAY_API_CRDS: [&str; 2] = [
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
];
/// Annotations every CRD of a Gateway API release bundle carries.
pub const CHANNEL: &str = "gateway.networking.k8s.io/channel";
pub const BUNDLE_VERSION: &str = "gateway.networking.k8s.io/bundle-version";
/// The first release whose experimental HTTPRoute has `retry`.
const RETRY_SINCE: (u64, u64) = (1, 2);

const INSTALL_HINT: &str = "install the experimental channel of Gateway API v1.2 or later \
(HTTPRoute retry exists only there): kubectl apply --server-side -f \
https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/experimental-install.yaml";

pub async fn check(client: &kube::Client) -> CheckResult {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for name in GATEWAY_API_CRDS {
        match crds.get_opt(name).await {
            Ok(Some(crd)) => {
                let annotations = crd.metadata.annotations.unwrap_or_default();
                match bundle_problem(&annotations) {
                    Some(problem) => problems.push(format!("{name}: {problem}")),
                    None => found.push(format!("{name} ({})", bundle_of(&annotations))),
                }
            }
            Ok(None) => missing.push(name),
            Err(e) => {
                return CheckResult::fail(
                    GATEWAY_API,
                    format!("reading CRD {name}: {e}"),
                    "plexusctl check needs `get` on customresourcedefinitions",
                );
            }
        }
    }
    if !missing.is_empty() {
        return CheckResult::fail(
            GATEWAY_API,
            format!("missing {}", missing.join(", ")),
            format!("{INSTALL_HINT}; routes are ignored without the CRDs"),
        );
    }
    if !problems.is_empty() {
        return CheckResult::fail(GATEWAY_API, problems.join("; "), INSTALL_HINT);
    }
    CheckResult::pass(GATEWAY_API, found.join(", "))
}

/// `experimental v1.2.1`, as the annotations say.
fn bundle_of(annotations: &BTreeMap<String, String>) -> String {
    let get = |key| annotations.get(key).map_or("?", String::as_str);
    format!("{} {}", get(CHANNEL), get(BUNDLE_VERSION))
}

/// Why a CRD with these annotations loses HTTPRoute `retry`, if it does.
fn bundle_problem(annotations: &BTreeMap<String, String>) -> Option<String> {
    let version = annotations.get(BUNDLE_VERSION);
    match annotations.get(CHANNEL).map(String::as_str) {
        Some("experimental") => match version.map(|v| (v, release_of(v))) {
            Some((_, Some(release))) if release >= RETRY_SINCE => None,
            Some((v, Some(_))) => Some(format!(
                "experimental channel {v}, older than v1.2: HTTPRoute has no retry"
            )),
            _ => Some(format!(
                "experimental channel of unknown version ({BUNDLE_VERSION}: {})",
                version.map_or("absent", String::as_str)
            )),
        },
        Some("standard") => Some(format!(
            "standard channel {}: the API server prunes HTTPRoute retry",
            version.map_or("(version unknown)", String::as_str)
        )),
        Some(other) => Some(format!("unknown channel {other:?}")),
        None => Some(format!(
            "no {CHANNEL} annotation: not from a Gateway API release bundle, channel unknown"
        )),
    }
}

/// `(major, minor)` of `v1.2.1` or `v1.3.0-rc.1`.
fn release_of(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.strip_prefix('v')?.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(channel: Option<&str>, version: Option<&str>) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        if let Some(channel) = channel {
            map.insert(CHANNEL.to_owned(), channel.to_owned());
        }
        if let Some(version) = version {
            map.insert(BUNDLE_VERSION.to_owned(), version.to_owned());
        }
        map
    }

    #[test]
    fn only_experimental_from_v1_2_keeps_retry() {
        for version in ["v1.2.0", "v1.2.1", "v1.3.0", "v1.4.0-rc.1", "v2.0.0"] {
            let found = annotations(Some("experimental"), Some(version));
            assert_eq!(bundle_problem(&found), None, "{version}");
        }
        let old = bundle_problem(&annotations(Some("experimental"), Some("v1.1.0"))).unwrap();
        assert!(old.contains("v1.1.0") && old.contains("no retry"), "{old}");
        let standard = bundle_problem(&annotations(Some("standard"), Some("v1.2.1"))).unwrap();
        assert!(standard.contains("standard channel v1.2.1"), "{standard}");
        for unknown in [
            annotations(None, Some("v1.2.1")),
            annotations(Some("experimental"), None),
            annotations(Some("experimental"), Some("main")),
            annotations(Some("beta"), Some("v1.2.1")),
        ] {
            assert!(bundle_problem(&unknown).is_some(), "{unknown:?}");
        }
    }

    #[test]
    fn the_hint_names_the_experimental_manifest() {
        assert!(INSTALL_HINT.contains("/v1.2.1/experimental-install.yaml"));
        assert!(!INSTALL_HINT.contains("standard"));
    }
}

//! The Kubernetes API permissions the controller's code uses, and nothing
//! more. The Helm chart's test compares the chart's ClusterRole with this
//! list, so the two cannot drift: when code starts (or stops) calling an
//! API, change this list in the same commit.

/// One RBAC rule: API group ("" is core), resource (`x/status` for a
/// subresource), verbs, and the code that needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub used_by: &'static str,
}

const LIST_WATCH: &[&str] = &["list", "watch"];

pub const PERMISSIONS: &[Permission] = &[
    // plexus_discovery::feed::kubernetes: a kube-rs watcher (list + watch) per kind, cluster-wide.
    Permission {
        api_group: "",
        resource: "namespaces",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    Permission {
        api_group: "",
        resource: "services",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    Permission {
        api_group: "",
        resource: "pods",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    Permission {
        api_group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    Permission {
        api_group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    Permission {
        api_group: "gateway.networking.k8s.io",
        resource: "grpcroutes",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    // Cross-namespace backendRefs: ResolvedRefs, and whether such a backend is served.
    Permission {
        api_group: "gateway.networking.k8s.io",
        resource: "referencegrants",
        verbs: LIST_WATCH,
        used_by: "plexus_discovery::feed::kubernetes",
    },
    // plexus_discovery::feed::route_status: the Accepted condition of routes with Service parents.
    Permission {
        api_group: "gateway.networking.k8s.io",
        resource: "httproutes/status",
        verbs: &["patch"],
        used_by: "plexus_discovery::feed::route_status",
    },
    Permission {
        api_group: "gateway.networking.k8s.io",
        resource: "grpcroutes/status",
        verbs: &["patch"],
        used_by: "plexus_discovery::feed::route_status",
    },
    // identity::ca_store: read the Secret plexus-ca, create it when absent.
    Permission {
        api_group: "",
        resource: "secrets",
        verbs: &["get", "create"],
        used_by: "identity::ca_store",
    },
    // identity::token_review: check a proxy's ServiceAccount token.
    Permission {
        api_group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        used_by: "identity::token_review",
    },
    // admission::ca_bundle: watch the injector's webhook configuration and
    // patch its caBundle (the chart narrows this to the release's own).
    Permission {
        api_group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "list", "watch", "patch"],
        used_by: "admission::ca_bundle",
    },
    // leader: kube-lease-manager reads, creates and (server-side apply,
    // strategic merge) patches the Lease.
    Permission {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
        used_by: "leader",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_resource_is_listed_once_with_verbs() {
        let mut seen = std::collections::HashSet::new();
        for p in PERMISSIONS {
            assert!(seen.insert((p.api_group, p.resource)), "{p:?} listed twice");
            assert!(!p.verbs.is_empty(), "{p:?} has no verbs");
        }
    }
}

//! Applying a Destination API update to the proxy's copy of a target.

use plexus_api::v1::{DestinationUpdate, Target};

/// A snapshot replaces the target; a delta replaces only the parts it carries
/// (routes, backends, protocol) and leaves the others as they were.
pub fn apply_update(current: &Target, update: DestinationUpdate) -> Target {
    let incoming = update.target.unwrap_or_default();
    if update.snapshot {
        return incoming;
    }
    Target {
        name: if incoming.name.is_empty() {
            current.name.clone()
        } else {
            incoming.name
        },
        protocol: incoming.protocol.or_else(|| current.protocol.clone()),
        routes: incoming.routes.or_else(|| current.routes.clone()),
        backends: incoming.backends.or_else(|| current.backends.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_api::v1::{Backend, BackendTable, ProtocolHint, RouteTable};

    fn target(default_backend: &str, backend: &str) -> Target {
        Target {
            name: "web.default.svc.cluster.local:80".into(),
            protocol: Some(ProtocolHint {
                protocol: "http1".into(),
            }),
            routes: Some(RouteTable {
                default_backend: default_backend.into(),
                ..Default::default()
            }),
            backends: Some(BackendTable {
                backends: [(
                    backend.to_string(),
                    Backend {
                        name: backend.into(),
                        ..Default::default()
                    },
                )]
                .into(),
            }),
        }
    }

    #[test]
    fn snapshot_replaces_everything() {
        let current = target("a", "a");
        let next = target("b", "b");
        let update = DestinationUpdate {
            snapshot: true,
            target: Some(next.clone()),
            ..Default::default()
        };
        assert_eq!(apply_update(&current, update), next);
    }

    #[test]
    fn delta_replaces_only_what_it_carries() {
        let current = target("a", "a");
        let update = DestinationUpdate {
            snapshot: false,
            target: Some(Target {
                backends: target("x", "b").backends,
                ..Default::default()
            }),
            ..Default::default()
        };
        let next = apply_update(&current, update);
        assert_eq!(next.name, current.name);
        assert_eq!(next.routes, current.routes);
        assert_eq!(next.protocol, current.protocol);
        assert!(next.backends.unwrap().backends.contains_key("b"));
    }
}

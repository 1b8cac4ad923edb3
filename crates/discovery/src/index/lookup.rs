//! Turning a target as a proxy names it into what the index looks up.

use std::net::SocketAddr;

use super::ObjectRef;

/// What a watched target names, normalised so that every spelling of the same
/// Service port shares one watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// A Service port by name (any of the DNS forms a pod's resolver tries).
    Service { service: ObjectRef, port: u16 },
    /// A ClusterIP or a pod IP.
    Address(SocketAddr),
    /// A name outside the cluster's Service domain: never meshed.
    External,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TargetError {
    #[error("target {0:?} has no port (expected host:port)")]
    MissingPort(String),
    #[error("target {target:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort { target: String, port: String },
}

impl Lookup {
    /// Parses `name.namespace.svc.<cluster-domain>:port`, `name.namespace.svc:port`,
    /// `name.namespace:port`, `name:port` (in `context_namespace`) or `ip:port`.
    pub fn parse(
        target: &str,
        context_namespace: &str,
        cluster_domain: &str,
    ) -> Result<Self, TargetError> {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            return Ok(Lookup::Address(addr));
        }
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| TargetError::MissingPort(target.to_string()))?;
        let port = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(TargetError::BadPort {
                    target: target.to_string(),
                    port: port.to_string(),
                });
            }
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let cluster_suffix = format!(
            ".svc.{}",
            cluster_domain.trim_matches('.').to_ascii_lowercase()
        );
        let (labels, qualified) = match host
            .strip_suffix(&cluster_suffix)
            .or_else(|| host.strip_suffix(".svc"))
        {
            Some(rest) => (rest, true),
            None => (host.as_str(), false),
        };
        let service = match labels.split('.').collect::<Vec<_>>()[..] {
            [name, namespace] if !name.is_empty() && !namespace.is_empty() => {
                ObjectRef::new(namespace, name)
            }
            [name] if !qualified && !name.is_empty() && !context_namespace.is_empty() => {
                ObjectRef::new(context_namespace, name)
            }
            _ => return Ok(Lookup::External),
        };
        Ok(Lookup::Service { service, port })
    }
}

/// The canonical name of a Service port, `name.namespace.svc.<cluster-domain>:port`.
pub(crate) fn canonical_name(service: &ObjectRef, port: u16, cluster_domain: &str) -> String {
    format!(
        "{}.{}.svc.{}:{}",
        service.name, service.namespace, cluster_domain, port
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, port: u16) -> Lookup {
        Lookup::Service {
            service: ObjectRef::new(ns, name),
            port,
        }
    }

    #[test]
    fn resolver_forms_name_the_same_service() {
        let parse = |t: &str| Lookup::parse(t, "shop", "cluster.local").unwrap();
        assert_eq!(
            parse("web.shop.svc.cluster.local:80"),
            service("shop", "web", 80)
        );
        assert_eq!(
            parse("web.shop.svc.cluster.local.:80"),
            service("shop", "web", 80)
        );
        assert_eq!(parse("web.shop.svc:80"), service("shop", "web", 80));
        assert_eq!(parse("web.shop:80"), service("shop", "web", 80));
        assert_eq!(parse("web:80"), service("shop", "web", 80));
        assert_eq!(parse("Web.Other:8080"), service("other", "web", 8080));
        assert_eq!(parse("api.github.com:443"), Lookup::External);
        assert_eq!(parse("web.svc.cluster.local:80"), Lookup::External);
        assert_eq!(
            parse("10.0.0.1:80"),
            Lookup::Address("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse("[fd00::1]:80"),
            Lookup::Address("[fd00::1]:80".parse().unwrap())
        );
    }

    #[test]
    fn bad_targets_are_errors() {
        assert_eq!(
            Lookup::parse("web", "shop", "cluster.local"),
            Err(TargetError::MissingPort("web".into()))
        );
        assert!(matches!(
            Lookup::parse("web:http", "shop", "cluster.local"),
            Err(TargetError::BadPort { .. })
        ));
        assert!(matches!(
            Lookup::parse("web:0", "shop", "cluster.local"),
            Err(TargetError::BadPort { .. })
        ));
    }

    #[test]
    fn short_name_without_context_is_external() {
        assert_eq!(
            Lookup::parse("web:80", "", "cluster.local"),
            Ok(Lookup::External)
        );
    }
}

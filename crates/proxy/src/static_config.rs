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

use std::net::SocketAddr;
use std::path::Path;

use plexus_api::v1::Target;
use serde::Deserialize;

use crate::destinations::{FixedDestinations, authority_key};

/// The file could not be used; the message names the entry and the field.
#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    destinations: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    aliases: Vec<String>,
    target: Target,
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<FixedDestinations, StaticConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| StaticConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|message| StaticConfigError::Invalid {
        path: path.display().to_string(),
        message,
    })
}

/// Parses the file's text; the error names the entry and field at fault.
pub fn parse(text: &str) -> Result<FixedDestinations, String> {
    let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut entries = Vec::with_capacity(file.destinations.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in file.destinations.into_iter().enumerate() {
        let at = format!("destinations[{i}]");
        let mut aliases = Vec::with_capacity(entry.aliases.len());
        for (j, alias) in entry.aliases.iter().enumerate() {
            let key = authority_key(alias).ok_or_else(|| {
                format!("{at}.aliases[{j}]: {alias:?} is not host:port or ip:port")
            })?;
            if !seen.insert(key.clone()) {
                return Err(format!("{at}.aliases[{j}]: {alias:?} is already used"));
            }
            aliases.push(key);
        }
        let mut target = entry.target;
        if aliases.is_empty() {
            return Err(format!("{at}.aliases: at least one alias is required"));
        }
        if target.name.is_empty() {
            target.name = entry.aliases[0].clone();
        }
        check_target(&target).map_err(|e| format!("{at}.target.{e}"))?;
        entries.push((aliases, target));
    }
    Ok(FixedDestinations::new(entries))
}

/// Checks what the proxy would otherwise only discover per request.
fn check_target(target: &Target) -> Result<(), String> {
    let backends = target
        .backends
        .as_ref()
        .map(|t| &t.backends)
        .filter(|b| !b.is_empty())
        .ok_or("backends.backends: at least one backend is required")?;
    for (name, backend) in backends {
        for (k, endpoint) in backend.endpoints.iter().enumerate() {
            endpoint.address.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "backends.backends[{name:?}].endpoints[{k}].address: {:?} is not ip:port",
                    endpoint.address
                )
            })?;
        }
    }
    let routes = target.routes.clone().unwrap_or_default();
    let known = |backend: &str| backends.contains_key(backend);
    if !routes.default_backend.is_empty() && !known(&routes.default_backend) {
        return Err(format!(
            "routes.default_backend: {:?} is not in backends.backends",
            routes.default_backend
        ));
    }
    let http = routes.http.iter().map(|r| {
        (
            &r.name,
            r.rules.iter().map(|r| &r.backends).collect::<Vec<_>>(),
        )
    });
    let grpc = routes.grpc.iter().map(|r| {
        (
            &r.name,
            r.rules.iter().map(|r| &r.backends).collect::<Vec<_>>(),
        )
    });
    for (route, rules) in http.chain(grpc) {
        for (r, refs) in rules.iter().enumerate() {
            if let Some(missing) = refs.iter().find(|b| !known(&b.backend)) {
                return Err(format!(
                    "routes[{route:?}].rules[{r}].backends: {:?} is not in backends.backends",
                    missing.backend
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::DestinationSource;

    const GOOD: &str = r#"
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

    #[test]
    fn a_good_file_is_read_in_the_protos_shape() {
        let source = parse(GOOD).unwrap();
        let known = source.known();
        assert_eq!(known.len(), 1);
        let target = &known[0];
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
        let err = parse(&bad_addr).err().unwrap();
        assert!(
            err.contains(
                "destinations[0].target.backends.backends[\"canary\"].endpoints[0].address"
            ),
            "{err}"
        );

        let bad_ref = GOOD.replace("backend: canary", "backend: nope");
        let err = parse(&bad_ref).err().unwrap();
        assert!(
            err.contains("destinations[0].target.routes[\"default/web-split\"].rules[0].backends"),
            "{err}"
        );

        let bad_alias = GOOD.replace("\"web\",", "\"web:port\",");
        let err = parse(&bad_alias).err().unwrap();
        assert!(err.contains("destinations[0].aliases[1]"), "{err}");

        let bad_type = GOOD.replace("weight: 90", "weight: lots");
        let err = parse(&bad_type).err().unwrap();
        assert!(
            err.contains("destinations[0].target.routes.http[0].rules[0].backends[0].weight"),
            "{err}"
        );

        let typo = GOOD.replace("aliases:", "alias:");
        let err = parse(&typo).err().unwrap();
        assert!(
            err.contains("destinations[0]") && err.contains("alias"),
            "{err}"
        );
    }
}

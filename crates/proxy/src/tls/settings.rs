//! The identity variables, read through the proxy's [`Env`].

use std::path::PathBuf;

use plexus_identity::SpiffeId;

use crate::config::{ConfigError, Env};

/// What the proxy needs to obtain and use its certificate. Absent (`None`
/// from [`IdentitySettings::from_env`]) when `PLEXUS_IDENTITY` is unset: the
/// proxy then runs without mTLS (local mode with no controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// `PLEXUS_IDENTITY`: this workload's SPIFFE ID.
    pub identity: SpiffeId,
    /// `PLEXUS_IDENTITY_TOKEN_FILE`: the projected ServiceAccount token (or a
    /// bootstrap token file). Re-read before every Certify: kubelet rotates it.
    pub token_file: PathBuf,
    /// `PLEXUS_IDENTITY_TRUST_ANCHORS`: the roots to trust.
    pub trust_anchors: TrustAnchors,
    /// `PLEXUS_IDENTITY_ADDR`: the controller's Identity API, `host:port`.
    pub controller_addr: String,
    /// `PLEXUS_CONTROLLER_IDENTITY`: the controller's SPIFFE ID, checked on
    /// every connection to it. Default `spiffe://<our trust domain>/ns/plexus/sa/plexus-controller`.
    pub controller_identity: SpiffeId,
}

/// Where the trust anchors come from. The variable holds either a path or,
/// if it starts with `-----BEGIN`, the PEM itself: the injector inlines it,
/// since a pod cannot mount a ConfigMap from the controller's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    File(PathBuf),
    Pem(String),
}

impl TrustAnchors {
    /// The PEM text; reads the file if it is one.
    pub fn load(&self) -> Result<Vec<u8>, (String, std::io::Error)> {
        match self {
            Self::Pem(pem) => Ok(pem.clone().into_bytes()),
            Self::File(path) => std::fs::read(path).map_err(|e| (path.display().to_string(), e)),
        }
    }
}

impl IdentitySettings {
    pub fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        let Some(identity) = present(env, "PLEXUS_IDENTITY") else {
            return Ok(None);
        };
        let identity: SpiffeId = parse(
            "PLEXUS_IDENTITY",
            identity,
            "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
        )?;
        let required = |name: &'static str, expected: &'static str| {
            present(env, name).ok_or(ConfigError {
                name,
                value: String::new(),
                expected,
            })
        };
        let controller_identity = match present(env, "PLEXUS_CONTROLLER_IDENTITY") {
            Some(value) => parse(
                "PLEXUS_CONTROLLER_IDENTITY",
                value,
                "the controller's SPIFFE ID",
            )?,
            None => SpiffeId::new(identity.trust_domain(), "plexus", "plexus-controller").map_err(
                |_| ConfigError {
                    name: "PLEXUS_CONTROLLER_IDENTITY",
                    value: String::new(),
                    expected: "the controller's SPIFFE ID",
                },
            )?,
        };
        let controller_addr = required("PLEXUS_IDENTITY_ADDR", "host:port of the controller")?;
        if !crate::config::is_host_port(&controller_addr) {
            return Err(ConfigError {
                name: "PLEXUS_IDENTITY_ADDR",
                value: controller_addr,
                expected: "host:port of the controller",
            });
        }
        Ok(Some(Self {
            identity,
            token_file: required("PLEXUS_IDENTITY_TOKEN_FILE", "a token file path")?.into(),
            trust_anchors: {
                let value = required(
                    "PLEXUS_IDENTITY_TRUST_ANCHORS",
                    "a PEM file path, or PEM text",
                )?;
                if value.starts_with("-----BEGIN") {
                    TrustAnchors::Pem(value)
                } else {
                    TrustAnchors::File(value.into())
                }
            },
            controller_addr,
            controller_identity,
        }))
    }
}

fn present(env: &dyn Env, name: &str) -> Option<String> {
    env.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn parse(
    name: &'static str,
    value: String,
    expected: &'static str,
) -> Result<SpiffeId, ConfigError> {
    value.parse().map_err(|_| ConfigError {
        name,
        value,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn absent_identity_means_no_mtls() {
        let env = HashMap::<&str, &str>::new();
        assert_eq!(IdentitySettings::from_env(&env).unwrap(), None);
    }

    #[test]
    fn reads_every_variable_and_defaults_the_controller_identity() {
        let env = HashMap::from([
            ("PLEXUS_IDENTITY", "spiffe://td/ns/shop/sa/web"),
            ("PLEXUS_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("PLEXUS_IDENTITY_TRUST_ANCHORS", "/etc/plexus/ca.crt"),
            ("PLEXUS_IDENTITY_ADDR", "plexus-controller.plexus.svc:8090"),
        ]);
        let settings = IdentitySettings::from_env(&env).unwrap().unwrap();
        assert_eq!(settings.identity.as_str(), "spiffe://td/ns/shop/sa/web");
        assert_eq!(
            settings.controller_identity.as_str(),
            "spiffe://td/ns/plexus/sa/plexus-controller"
        );
        assert_eq!(settings.token_file, PathBuf::from("/var/run/token"));
        assert_eq!(
            settings.trust_anchors,
            TrustAnchors::File("/etc/plexus/ca.crt".into())
        );
        let mut inline = env.clone();
        inline.insert(
            "PLEXUS_IDENTITY_TRUST_ANCHORS",
            "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n",
        );
        let settings = IdentitySettings::from_env(&inline).unwrap().unwrap();
        assert!(matches!(settings.trust_anchors, TrustAnchors::Pem(_)));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = [
            ("PLEXUS_IDENTITY", "spiffe://td/ns/shop/sa/web"),
            ("PLEXUS_IDENTITY_TOKEN_FILE", "/t"),
            ("PLEXUS_IDENTITY_TRUST_ANCHORS", "/a"),
            ("PLEXUS_IDENTITY_ADDR", "controller:8090"),
        ];
        let cases = [
            ("PLEXUS_IDENTITY", "spiffe://td/ns/shop/sa/web?x"),
            ("PLEXUS_IDENTITY_ADDR", "controller"),
            ("PLEXUS_IDENTITY_ADDR", "controller:99999"),
            ("PLEXUS_IDENTITY_TOKEN_FILE", " "),
            ("PLEXUS_CONTROLLER_IDENTITY", "controller"),
        ];
        for (name, value) in cases {
            let mut env: HashMap<&str, &str> = HashMap::from(base);
            env.insert(name, value);
            let err = IdentitySettings::from_env(&env).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }
}

//! The identity variables: who this workload is, where Certify is, what to trust.

use plexus_identity::SpiffeId;

use super::reader::Reader;
use super::{CONTROLLER_ADDR, controller_host_port};
use crate::tls::{IdentitySettings, TrustAnchors};

const SPIFFE_ID: &str = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>";
const CONTROLLER_ID: &str = "the controller's SPIFFE ID";

/// `None` when `PLEXUS_IDENTITY` is unset (no mTLS) or when a variable is bad
/// (then recorded in `r`).
pub(super) fn read(r: &mut Reader) -> Option<IdentitySettings> {
    let identity = r.present("PLEXUS_IDENTITY")?;
    let identity: Option<SpiffeId> = r.parse_value("PLEXUS_IDENTITY", identity, SPIFFE_ID);
    let token_file = r.required("PLEXUS_IDENTITY_TOKEN_FILE", "a token file path");
    let trust_anchors = r
        .required(
            "PLEXUS_IDENTITY_TRUST_ANCHORS",
            "a PEM file path, or PEM text",
        )
        .map(|value| {
            // The injector inlines the PEM: a pod cannot mount a ConfigMap
            // from the controller's namespace.
            if value.starts_with("-----BEGIN") {
                TrustAnchors::Pem(value)
            } else {
                TrustAnchors::File(value.into())
            }
        });
    let controller_addr = r
        .required("PLEXUS_IDENTITY_ADDR", CONTROLLER_ADDR)
        .and_then(|addr| controller_host_port(r, "PLEXUS_IDENTITY_ADDR", addr));
    let controller_identity = match r.present("PLEXUS_CONTROLLER_IDENTITY") {
        Some(value) => r.parse_value("PLEXUS_CONTROLLER_IDENTITY", value, CONTROLLER_ID),
        None => {
            let identity = identity.as_ref()?;
            let default = SpiffeId::new(identity.trust_domain(), "plexus", "plexus-controller");
            if default.is_err() {
                r.bad("PLEXUS_CONTROLLER_IDENTITY", String::new(), CONTROLLER_ID);
            }
            default.ok()
        }
    };
    Some(IdentitySettings {
        identity: identity?,
        token_file: token_file?.into(),
        trust_anchors: trust_anchors?,
        controller_addr: controller_addr?,
        controller_identity: controller_identity?,
    })
}

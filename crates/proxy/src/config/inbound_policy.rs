//! The inbound policy's variables, used without a controller and until its
//! first answer: the mTLS mode and the identities allowed in.

use plexus_api::v1::ServerPolicy;
use plexus_core::ports::parse_list;
use plexus_identity::SpiffeId;

use super::reader::Reader;
use crate::inbound::policy::{PERMISSIVE, STRICT};

/// `PLEXUS_INBOUND_MTLS_MODE` (`permissive` default, or `strict`) and
/// `PLEXUS_INBOUND_ALLOWED_IDENTITIES` (comma-separated SPIFFE IDs; empty: any).
pub(super) fn read(r: &mut Reader) -> ServerPolicy {
    let mode = r
        .present("PLEXUS_INBOUND_MTLS_MODE")
        .map(|m| m.to_ascii_lowercase())
        .unwrap_or_else(|| PERMISSIVE.to_owned());
    if mode != PERMISSIVE && mode != STRICT {
        r.bad(
            "PLEXUS_INBOUND_MTLS_MODE",
            mode.clone(),
            "permissive or strict",
        );
    }
    let allowed = r
        .raw("PLEXUS_INBOUND_ALLOWED_IDENTITIES")
        .unwrap_or_default();
    let allowed_identities = parse_list::<SpiffeId>(&allowed)
        .map(|ids| ids.iter().map(ToString::to_string).collect())
        .unwrap_or_else(|_| {
            r.bad(
                "PLEXUS_INBOUND_ALLOWED_IDENTITIES",
                allowed,
                "comma-separated SPIFFE IDs",
            );
            Vec::new()
        });
    ServerPolicy {
        mtls_mode: mode,
        allowed_identities,
        opaque_ports: Vec::new(),
        rate_limit: None,
    }
}

//! Keeps the MutatingWebhookConfiguration's `caBundle` equal to the trust
//! anchor of the CA that signs the webhook's certificate. The chart leaves
//! `caBundle` out (the CA is made at run time), and `helm upgrade` may reset
//! it, so the controller checks it on a timer rather than once.

use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::PatchParams;

/// How often the configuration is checked in a cluster.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every webhook entry already carried the bundle.
    Current,
    /// This many entries were patched.
    Patched(usize),
    /// No configuration of that name (not installed yet, or uninstalled).
    Absent,
}

/// Checks the configuration `name` every `interval`, forever, patching every
/// webhook entry whose `clientConfig.caBundle` is not `trust_anchor_pem`.
/// Failures are logged and retried at the next tick.
pub async fn keep_current(
    client: kube::Client,
    name: String,
    trust_anchor_pem: String,
    interval: Duration,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        every.tick().await;
        match reconcile(&api, &name, trust_anchor_pem.as_bytes()).await {
            Ok(outcome) => {
                if last.as_ref() != Some(&outcome) {
                    match outcome {
                        Outcome::Patched(n) => {
                            tracing::info!(%name, webhooks = n, "caBundle updated")
                        }
                        Outcome::Absent => tracing::warn!(
                            %name,
                            "MutatingWebhookConfiguration not found; pods are not injected"
                        ),
                        Outcome::Current => tracing::debug!(%name, "caBundle current"),
                    }
                }
                last = Some(outcome);
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "checking the webhook caBundle");
                last = None;
            }
        }
    }
}

/// One check: reads the configuration and patches the entries that differ.
pub async fn reconcile(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    bundle: &[u8],
) -> Result<Outcome, kube::Error> {
    let Some(config) = api.get_opt(name).await? else {
        return Ok(Outcome::Absent);
    };
    let patch = patch_for(&config, bundle);
    let stale = patch.0.len() / 2;
    if stale == 0 {
        return Ok(Outcome::Current);
    }
    api.patch(
        name,
        &PatchParams::default(),
        &kube::api::Patch::Json::<()>(patch),
    )
    .await?;
    Ok(Outcome::Patched(stale))
}

/// For each stale entry: a test that index `i` is still the webhook we read
/// (a concurrent edit that reorders the list makes the patch fail rather than
/// touch the wrong entry), then the new bundle.
fn patch_for(config: &MutatingWebhookConfiguration, bundle: &[u8]) -> Patch {
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            == Some(bundle)
        {
            continue;
        }
        let index = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", &index, "name"]),
            value: webhook.name.clone().into(),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", &index, "clientConfig", "caBundle"]),
            // ByteString serializes as base64, as the API expects.
            value: serde_json::to_value(ByteString(bundle.to_vec())).unwrap_or_default(),
        }));
    }
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    fn webhook(name: &str, bundle: Option<&[u8]>) -> MutatingWebhook {
        MutatingWebhook {
            name: name.to_string(),
            client_config: WebhookClientConfig {
                ca_bundle: bundle.map(|b| ByteString(b.to_vec())),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        }
    }

    #[test]
    fn only_entries_that_differ_are_patched_behind_a_name_test() {
        let config = MutatingWebhookConfiguration {
            webhooks: Some(vec![
                webhook("a", Some(b"PEM")),
                webhook("b", None),
                webhook("c", Some(b"OLD")),
            ]),
            ..MutatingWebhookConfiguration::default()
        };
        let patch = serde_json::to_value(patch_for(&config, b"PEM")).unwrap();
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "UEVN"},
                {"op": "test", "path": "/webhooks/2/name", "value": "c"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "UEVN"},
            ])
        );
    }
}

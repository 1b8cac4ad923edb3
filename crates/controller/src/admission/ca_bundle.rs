//! Keeps the MutatingWebhookConfiguration's `caBundle` equal to the trust
//! anchor of the CA that signs the webhook's certificate. The chart leaves
//! `caBundle` out (the CA is made at run time), `helm install` may create the
//! object after the controller started, and `helm upgrade` (or a person) may
//! reset it: so the controller watches that one object and answers every
//! change, rather than checking once or on a timer.

use std::time::Duration;

use futures_util::StreamExt;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::PatchParams;
use kube::runtime::{WatchStreamExt, watcher};

/// A failed patch is tried again after this long, if no change comes first.
const RETRY_AFTER: Duration = Duration::from_secs(5);

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

/// Watches the configuration `name` (only it: a `metadata.name` field
/// selector, so another install's configuration is never read or touched)
/// and patches every webhook entry whose `clientConfig.caBundle` is not
/// `trust_anchor_pem`, at start and after each change, until dropped.
pub async fn keep_current(client: kube::Client, name: String, trust_anchor_pem: String) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api.clone(), selector)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut last = None;
    let mut retry: Option<tokio::time::Instant> = None;
    // The first check runs at once: it reports an absent configuration.
    let mut first = true;
    loop {
        if !first {
            let retry_due = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(%name, error = %e, "watching the webhook configuration");
                        continue;
                    }
                    None => return,
                },
                () = retry_due => {}
            }
        }
        first = false;
        retry = None;
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
                tracing::warn!(%name, error = %e, "patching the webhook caBundle");
                last = None;
                retry = Some(tokio::time::Instant::now() + RETRY_AFTER);
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

//! The release's MutatingWebhookConfiguration: present, and every entry's
//! `caBundle` holding the CA the controller serves the webhook with (the
//! `ca.crt` of its CA Secret). The API server verifies the webhook's TLS
//! certificate with that bundle alone: any other bundle fails the handshake,
//! and under the chart's `failurePolicy: Ignore` pods then start uninjected.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use plexus_core::{CA_SECRET, CA_TRUST_ANCHOR_KEY};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{CheckCommand, CheckResult, WEBHOOK, release};

pub async fn check(client: &kube::Client, options: &CheckCommand) -> CheckResult {
    let namespace = &options.namespace;
    let name = release::webhook_configuration(&options.release, namespace);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let shown = format!("MutatingWebhookConfiguration {name}");
    let config = match configs.get_opt(&name).await {
        Ok(Some(config)) => config,
        Ok(None) => {
            return CheckResult::fail(
                WEBHOOK,
                format!("{shown} not found"),
                format!(
                    "the chart creates it for release {} in namespace {namespace}: install it, or \
                     pass the --release and --namespace of the install; pods are not injected",
                    options.release
                ),
            );
        }
        Err(e) => {
            return CheckResult::fail(
                WEBHOOK,
                format!("reading {shown}: {e}"),
                "plexusctl check needs `get` on mutatingwebhookconfigurations",
            );
        }
    };
    let webhooks = config.webhooks.unwrap_or_default();
    if webhooks.is_empty() {
        return CheckResult::fail(
            WEBHOOK,
            format!("{shown} has no webhooks"),
            "reinstall the chart",
        );
    }
    let ca = match ca_certificates(client, namespace).await {
        Ok(ca) => ca,
        Err(failure) => return failure,
    };
    let problems: Vec<String> = webhooks
        .iter()
        .filter_map(|webhook| {
            let bundle = webhook.client_config.ca_bundle.as_ref();
            bundle_problem(bundle.map_or(&[][..], |b| b.0.as_slice()), &ca)
                .map(|problem| format!("{}: {problem}", webhook.name))
        })
        .collect();
    let secret = format!("Secret {namespace}/{CA_SECRET}");
    if problems.is_empty() {
        return CheckResult::pass(
            WEBHOOK,
            format!("{shown}: caBundle holds the CA of {secret}"),
        );
    }
    CheckResult::fail(
        WEBHOOK,
        format!("{shown}: {}", problems.join("; ")),
        format!(
            "the leading controller sets caBundle to {CA_TRUST_ANCHOR_KEY} of {secret}: check that the \
             controller is ready, leads (its /status) and is given --webhook-configuration {name}; \
             until then the API server cannot verify the webhook and pods go uninjected"
        ),
    )
}

/// The certificates of `ca.crt` in the CA Secret, or the failed check.
async fn ca_certificates(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<CertificateDer<'static>>, CheckResult> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let shown = format!("Secret {namespace}/{CA_SECRET}");
    let secret = match secrets.get_opt(CA_SECRET).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(CheckResult::fail(
                WEBHOOK,
                format!("{shown} not found: no CA to compare the caBundle with"),
                "the leading controller creates it at start: check the controller first",
            ));
        }
        Err(e) => {
            return Err(CheckResult::fail(
                WEBHOOK,
                format!("reading {shown}: {e}"),
                format!("plexusctl check needs `get` on secrets in {namespace}"),
            ));
        }
    };
    let pem = secret
        .data
        .as_ref()
        .and_then(|data| data.get(CA_TRUST_ANCHOR_KEY))
        .map(|value| value.0.as_slice())
        .unwrap_or_default();
    certificates(pem).map_err(|why| {
        CheckResult::fail(
            WEBHOOK,
            format!("{shown}: {CA_TRUST_ANCHOR_KEY} {why}"),
            format!(
                "the Secret is not the controller's CA: delete it and restart the controller \
                 (kubectl -n {namespace} rollout restart deployment plexus-controller), which \
                 makes a new CA; meshed pods then need a restart for the new trust anchors"
            ),
        )
    })
}

/// What is wrong with a `caBundle` for a webhook serving with `ca`, if anything.
/// Certificates are compared as DER, so PEM line breaks or order do not matter.
fn bundle_problem(bundle: &[u8], ca: &[CertificateDer<'_>]) -> Option<String> {
    match certificates(bundle) {
        Err(why) => Some(format!("caBundle {why}")),
        Ok(held) if ca.iter().any(|c| held.contains(c)) => None,
        Ok(held) => Some(format!(
            "caBundle ({} certificates) does not hold the controller's CA",
            held.len()
        )),
    }
}

/// The PEM certificates in `pem`: at least one, and nothing unreadable.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err("is empty".to_owned());
    }
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM certificate block around `der` (any bytes: only equality counts here).
    fn pem_of(der: &[u8]) -> String {
        let body = base64(der);
        format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    }

    /// base64, as Kubernetes' ByteString writes it.
    fn base64(bytes: &[u8]) -> String {
        serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    #[test]
    fn a_bundle_must_hold_the_ca_as_a_certificate() {
        let ca = certificates(pem_of(b"the CA").as_bytes()).unwrap();
        let other = pem_of(b"another CA");
        assert_eq!(bundle_problem(pem_of(b"the CA").as_bytes(), &ca), None);
        // Re-wrapped, and beside another CA: still the same certificate.
        let rewrapped = pem_of(b"the CA").replace('\n', "\r\n");
        assert_eq!(
            bundle_problem(format!("{other}{rewrapped}").as_bytes(), &ca),
            None
        );
        let wrong = bundle_problem(other.as_bytes(), &ca).unwrap();
        assert!(
            wrong.contains("does not hold the controller's CA"),
            "{wrong}"
        );
        assert_eq!(
            bundle_problem(b"", &ca).as_deref(),
            Some("caBundle is empty")
        );
        assert_eq!(
            bundle_problem(b"LS0tLS1CRUdJTg==", &ca).as_deref(),
            Some("caBundle holds no PEM certificate")
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let problem = bundle_problem(broken.as_bytes(), &ca).unwrap();
        assert!(problem.starts_with("caBundle is not PEM"), "{problem}");
    }
}

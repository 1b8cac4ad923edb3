//! The proxy's own inbound policy from the controller (`WatchServer`): the
//! stream is kept open, re-opened with backoff when it breaks, and the last
//! policy received keeps applying meanwhile.

use std::sync::Arc;

use plexus_api::v1::destination_client::DestinationClient;
use plexus_api::v1::{ServerPolicy, ServerRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::Backoff;
use crate::inbound_policy::{Policy, PolicyWatch};

/// Follows the policy of the workload `request` names. Until the controller
/// first answers, `initial` (the environment's policy) applies.
pub fn watch_server_policy(
    channel: Channel,
    request: ServerRequest,
    initial: &ServerPolicy,
) -> PolicyWatch {
    let (tx, rx) = watch::channel(Arc::new(Policy::compile(initial)));
    tokio::spawn(follow(DestinationClient::new(channel), request, tx));
    rx
}

async fn follow(
    mut client: DestinationClient<Channel>,
    request: ServerRequest,
    policy: watch::Sender<Arc<Policy>>,
) {
    let mut backoff = Backoff::new();
    loop {
        match client.watch_server(request.clone()).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff.reset();
                            tracing::info!(
                                mtls_mode = %update.mtls_mode,
                                allowed = update.allowed_identities.len(),
                                "inbound policy"
                            );
                            policy.send_replace(Arc::new(Policy::compile(&update)));
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(%error, "server policy watch broke");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "server policy watch failed"),
        }
        if policy.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

//! The proxy's own inbound policy from the controller (`WatchServer`): the
//! stream is kept open, re-opened with backoff when it breaks, and the last
//! policy received keeps applying meanwhile.

use std::sync::Arc;

use plexus_api::v1::destination_client::DestinationClient;
use plexus_api::v1::{ServerPolicy, ServerRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::follow_stream;
use crate::inbound::policy::{Policy, PolicyWatch};

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
    client: DestinationClient<Channel>,
    request: ServerRequest,
    policy: watch::Sender<Arc<Policy>>,
) {
    follow_stream(
        "server policy",
        || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.watch_server(request).await }
        },
        |update: ServerPolicy| {
            tracing::info!(
                mtls_mode = %update.mtls_mode,
                allowed = update.allowed_identities.len(),
                "inbound policy"
            );
            let next = Policy::compile_after(&update, Some(&policy.borrow()));
            policy.send_replace(Arc::new(next));
        },
        || policy.is_closed(),
    )
    .await;
}

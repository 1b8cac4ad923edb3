//! `plexusctl traces`' OTLP receiver as the tests use it: bound on loopback
//! (OTLP/gRPC and OTLP/HTTP on ephemeral ports), traces awaited with a bound.

use std::net::SocketAddr;
use std::time::Duration;

use plexus_traces::{AssemblyConfig, Receiver, Trace};

/// A receiver on 127.0.0.1 ephemeral ports (gRPC and HTTP) assembling
/// traces with `config`.
pub async fn receiver(config: AssemblyConfig) -> Receiver {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    Receiver::bind_with(any, any, config)
        .await
        .expect("the receiver binds")
}

/// The next finished trace, failing the test if none comes within `bound`.
pub async fn next_trace(receiver: &mut Receiver, bound: Duration) -> Trace {
    tokio::time::timeout(bound, receiver.next_trace())
        .await
        .unwrap_or_else(|_| panic!("no trace finished within {bound:?}"))
        .expect("the receiver runs")
}

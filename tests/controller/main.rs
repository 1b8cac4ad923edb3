//! The control plane's integration tests: the controller's APIs, feeds,
//! injector and binary, and `plexusctl` (its `check`, `inject` and `traces`
//! commands) in `cli`. One module per suite; the helpers are `plexus_tests`'.

mod admin;
mod controller_binary;
mod destination_grpc;
mod file_feed;
mod inject_webhook;
mod injector_https;
mod kubernetes_feed;
mod leader_election;
mod tracing;

/// `plexusctl`'s tests.
mod cli {
    mod check_command;
    mod inject_command;
    mod traces_receiver;
}

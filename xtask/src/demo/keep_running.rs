//! What `--keep-running` tells the user: how to send requests, and where traces go.

use super::topology::{NAMESPACE, Topology};

pub fn print_help(topology: &Topology, otlp_endpoint: &str) {
    let frontend = topology.frontend();
    println!("\nThe demo keeps running; Ctrl-C stops everything.");
    println!("\nSend a request to the frontend, through its sidecar:");
    println!(
        "  curl -s -H 'Host: frontend.{NAMESPACE}.svc.cluster.local:8080' http://{}/",
        frontend.inbound_addr()
    );
    println!("Call the backend the way the frontend does (its sidecar routes by Host):");
    println!(
        "  curl -s -H 'Host: backend.{NAMESPACE}.svc.cluster.local:8080' http://{}/",
        frontend.outbound_addr()
    );
    println!("What a sidecar knows and counts:");
    println!("  curl -s http://{}/config", frontend.admin_addr());
    println!("  curl -s http://{}/metrics", frontend.admin_addr());
    println!("\nSpans go to {otlp_endpoint} (OTLP/gRPC, PLEXUS_OTLP_ENDPOINT of every sidecar).");
    println!("To read them in Jaeger or an OpenTelemetry Collector instead, start one with an");
    println!("OTLP/gRPC receiver and rerun the demo with that endpoint; for Jaeger:");
    println!(
        "  docker run --rm -p 127.0.0.1:14317:4317 -p 127.0.0.1:16686:16686 jaegertracing/all-in-one"
    );
    println!("  cargo xtask demo --keep-running --otlp-endpoint http://127.0.0.1:14317");
    println!("  (then open http://127.0.0.1:16686); for a Collector, an `otlp` receiver with");
    println!("  `protocols: grpc: endpoint: 127.0.0.1:14317` and the same --otlp-endpoint.");
}

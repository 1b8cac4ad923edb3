//! The project's stated targets for the proxy (issues 2 and 4), checked
//! against a run, so a report says at once what is met.

use serde::Serialize;

use super::report::{Outcome, Report, ScenarioReport};
use super::scenario::{Pacing, Protocol, Topology};

const MIB: f64 = 1024.0;

#[derive(Debug, PartialEq, Serialize)]
pub struct TargetCheck {
    pub target: &'static str,
    /// The measured figure, in the target's unit.
    pub measured: f64,
    pub met: bool,
}

/// Every target the run has the figures for.
pub fn check(report: &Report) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let versus = |topology: Topology, connections: usize| {
        report
            .scenarios
            .iter()
            .find(|r| is(r, topology, Protocol::H1, connections))
            .and_then(|r| match &r.outcome {
                Outcome::Measured(measured) => measured.versus_direct,
                Outcome::Failed(_) => None,
            })
    };
    if let Some(ratio) = versus(Topology::Proxy, 16).and_then(|v| v.throughput_ratio) {
        checks.push(TargetCheck {
            target: "one proxy, HTTP/1.1, 16 connections: throughput ≥ 0.50 × direct",
            measured: ratio,
            met: ratio >= 0.50,
        });
    }
    if let Some(versus) = versus(Topology::Proxy, 1) {
        checks.push(TargetCheck {
            target: "one proxy, HTTP/1.1, 1 connection: p50 added ≤ 40 µs",
            measured: versus.p50.added_us,
            met: versus.p50.added_us <= 40.0,
        });
    }
    if let Some(ratio) = versus(Topology::PairMtls, 16).and_then(|v| v.throughput_ratio) {
        checks.push(TargetCheck {
            target: "mTLS proxy pair, HTTP/1.1, 16 connections: throughput ≥ 0.30 × direct",
            measured: ratio,
            met: ratio >= 0.30,
        });
    }
    if let Some(Outcome::Measured(costs)) = &report.handshakes
        && let Some(ratio) = costs.mean_ratio
    {
        checks.push(TargetCheck {
            target: "a new mTLS connection ≤ 1.5 × a new nginx TLS 1.3 connection (mean)",
            measured: ratio,
            met: ratio <= 1.5,
        });
    }
    if let Some(Outcome::Measured(rss)) = &report.rss_after_requests
        && rss.requests >= 100_000
    {
        let mib = rss.memory.rss_kib as f64 / MIB;
        checks.push(TargetCheck {
            target: "one proxy, RSS after 100,000 requests < 15 MiB",
            measured: mib,
            met: mib < 15.0,
        });
    }
    checks
}

fn is(report: &ScenarioReport, topology: Topology, protocol: Protocol, connections: usize) -> bool {
    let scenario = &report.scenario;
    scenario.topology == topology
        && scenario.protocol == protocol
        && scenario.connections == connections
        && scenario.pacing == Pacing::ClosedLoop
}

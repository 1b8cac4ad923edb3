//! Which measurements one bench run makes, in which order: every group (same
//! protocol, connections and pacing) runs direct first, then through one
//! proxy, then through a pair (plaintext, then mTLS), back to back, so drift
//! between them is small.

use std::fmt;

use serde::Serialize;

/// The path a request takes from the load generator to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Load generator -> upstream.
    Direct,
    /// Load generator -> proxy (outbound) -> upstream.
    Proxy,
    /// Load generator -> client proxy (outbound) -> server proxy (inbound) -> upstream.
    Pair,
    /// As `pair`, the proxies talking mTLS with certificates from a real controller.
    PairMtls,
}

impl Topology {
    pub fn proxies(self) -> usize {
        match self {
            Topology::Direct => 0,
            Topology::Proxy => 1,
            Topology::Pair | Topology::PairMtls => 2,
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Direct => "direct",
            Topology::Proxy => "proxy",
            Topology::Pair => "pair",
            Topology::PairMtls => "pair-mtls",
        })
    }
}

/// What the load generator speaks (the proxies may speak something else between them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
        })
    }
}

/// When each connection sends its next request.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Pacing {
    /// As soon as the previous response arrived: measures capacity.
    ClosedLoop,
    /// On a fixed schedule whatever the responses do: measures latency at a load.
    FixedRate { requests_per_sec: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scenario {
    pub topology: Topology,
    pub protocol: Protocol,
    pub connections: usize,
    pub pacing: Pacing,
}

impl Scenario {
    pub fn name(&self) -> String {
        match self.pacing {
            Pacing::ClosedLoop => {
                format!("{} c{} {}", self.protocol, self.connections, self.topology)
            }
            Pacing::FixedRate { requests_per_sec } => format!(
                "{} c{} @{requests_per_sec}/s {}",
                self.protocol, self.connections, self.topology
            ),
        }
    }

    /// The direct scenario this one is compared with.
    pub fn direct(&self) -> Scenario {
        Scenario {
            topology: Topology::Direct,
            ..*self
        }
    }
}

/// What the command line asked for.
pub struct Selection {
    pub topologies: Vec<Topology>,
    pub protocols: Vec<Protocol>,
    pub connections: Vec<usize>,
    /// Fixed-rate scenarios at this rate, when set.
    pub rate: Option<f64>,
    pub rate_connections: usize,
}

/// The scenarios to run, grouped and ordered (closed loop first, then fixed rate).
pub fn plan(selection: &Selection) -> Vec<Scenario> {
    let topologies = sorted_unique(&selection.topologies);
    let protocols = sorted_unique(&selection.protocols);
    let connections = sorted_unique(&selection.connections);

    let mut groups: Vec<(Protocol, usize, Pacing)> = Vec::new();
    for &protocol in &protocols {
        for &count in &connections {
            groups.push((protocol, count, Pacing::ClosedLoop));
        }
    }
    if let Some(requests_per_sec) = selection.rate {
        for &protocol in &protocols {
            groups.push((
                protocol,
                selection.rate_connections,
                Pacing::FixedRate { requests_per_sec },
            ));
        }
    }
    groups
        .into_iter()
        .flat_map(|(protocol, connections, pacing)| {
            topologies.iter().map(move |&topology| Scenario {
                topology,
                protocol,
                connections,
                pacing,
            })
        })
        .collect()
}

fn sorted_unique<T: Ord + Copy>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items.dedup();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_run_direct_first_then_proxy_then_the_pairs() {
        let scenarios = plan(&Selection {
            topologies: vec![
                Topology::PairMtls,
                Topology::Pair,
                Topology::Direct,
                Topology::Proxy,
            ],
            protocols: vec![Protocol::H2, Protocol::H1],
            connections: vec![16, 1, 16],
            rate: Some(1_000.0),
            rate_connections: 4,
        });
        let names: Vec<String> = scenarios.iter().map(Scenario::name).collect();
        assert_eq!(
            names,
            [
                "h1 c1 direct",
                "h1 c1 proxy",
                "h1 c1 pair",
                "h1 c1 pair-mtls",
                "h1 c16 direct",
                "h1 c16 proxy",
                "h1 c16 pair",
                "h1 c16 pair-mtls",
                "h2 c1 direct",
                "h2 c1 proxy",
                "h2 c1 pair",
                "h2 c1 pair-mtls",
                "h2 c16 direct",
                "h2 c16 proxy",
                "h2 c16 pair",
                "h2 c16 pair-mtls",
                "h1 c4 @1000/s direct",
                "h1 c4 @1000/s proxy",
                "h1 c4 @1000/s pair",
                "h1 c4 @1000/s pair-mtls",
                "h2 c4 @1000/s direct",
                "h2 c4 @1000/s proxy",
                "h2 c4 @1000/s pair",
                "h2 c4 @1000/s pair-mtls",
            ]
        );
    }

    #[test]
    fn a_filter_keeps_only_the_chosen_topologies() {
        let scenarios = plan(&Selection {
            topologies: vec![Topology::Direct],
            protocols: vec![Protocol::H1],
            connections: vec![1],
            rate: None,
            rate_connections: 4,
        });
        assert_eq!(scenarios.len(), 1);
        assert_eq!(scenarios[0].topology, Topology::Direct);
        assert_eq!(scenarios[0].direct(), scenarios[0]);
    }

    #[test]
    fn each_scenario_is_compared_with_its_own_group() {
        let pair = Scenario {
            topology: Topology::Pair,
            protocol: Protocol::H2,
            connections: 16,
            pacing: Pacing::FixedRate {
                requests_per_sec: 500.0,
            },
        };
        let direct = pair.direct();
        assert_eq!(direct.topology, Topology::Direct);
        assert_eq!(
            (direct.protocol, direct.connections, direct.pacing),
            (pair.protocol, 16, pair.pacing)
        );
    }
}

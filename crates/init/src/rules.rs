//! The redirect rules, rendered as `iptables-restore --noflush` input.
//!
//! Idempotence: declaring a chain of our own (`:PLEXUS_INBOUND - [0:0]`) in a `--noflush`
//! restore flushes it, so our chains are rebuilt whole each run; the two jump rules from the
//! built-in chains are only emitted when `iptables-save` does not already show them.

use plexus_core::app_source;
use plexus_core::ports::{Cidr, PortRange};

/// Entry point for inbound TCP, jumped to from `PREROUTING`.
pub const INBOUND_CHAIN: &str = "PLEXUS_INBOUND";
/// Redirects to the proxy's inbound listener.
pub const INBOUND_REDIRECT_CHAIN: &str = "PLEXUS_INBOUND_REDIRECT";
/// Entry point for locally generated TCP, jumped to from `OUTPUT`.
pub const OUTPUT_CHAIN: &str = "PLEXUS_OUTPUT";
/// Redirects to the proxy's outbound listener.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "PLEXUS_OUTBOUND_REDIRECT";

/// Which of `iptables` / `ip6tables` a rule set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    /// The inbound proxy's source address for the app ([`app_source`]), as a host CIDR.
    fn app_source(self) -> String {
        match self {
            Self::V4 => format!("{}/32", app_source::V4),
            Self::V6 => format!("{}/128", app_source::V6),
        }
    }

    fn contains(self, cidr: &Cidr) -> bool {
        match self {
            Self::V4 => cidr.addr.is_ipv4(),
            Self::V6 => cidr.addr.is_ipv6(),
        }
    }
}

/// What the rules redirect and what they leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The proxy's UID: its own connections are never redirected (no loops).
    pub proxy_uid: u32,
    /// The proxy's inbound listener (all addresses).
    pub inbound_port: u16,
    /// The proxy's outbound listener (loopback).
    pub outbound_port: u16,
    /// The proxy's admin port, kept reachable for kubelet probes and metrics scrapes.
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    /// Destinations reached directly; each applies only to the family of its address.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Default for Redirect {
    fn default() -> Self {
        Self {
            proxy_uid: 2102,
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15020,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }
}

impl Redirect {
    /// The jump rules from the built-in chains into ours, as `iptables-save` prints them.
    pub fn jumps() -> [String; 2] {
        [
            format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
            format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"),
        ]
    }

    /// `iptables-restore --noflush` input for `family`, given the current `iptables-save -t nat`
    /// output (empty when unknown, e.g. for `--dry-run`).
    pub fn render(&self, family: Family, current_nat: &str) -> String {
        let mut out = vec![
            "# plexus-init: input for iptables-restore --noflush".to_string(),
            "*nat".to_string(),
        ];
        for chain in [
            INBOUND_CHAIN,
            INBOUND_REDIRECT_CHAIN,
            OUTPUT_CHAIN,
            OUTBOUND_REDIRECT_CHAIN,
        ] {
            out.push(format!(":{chain} - [0:0]"));
        }
        out.extend(self.inbound_rules());
        out.extend(self.output_rules(family));
        let present: Vec<&str> = current_nat.lines().map(str::trim).collect();
        out.extend(
            Self::jumps()
                .into_iter()
                .filter(|jump| !present.contains(&jump.as_str())),
        );
        out.push("COMMIT".to_string());
        let mut text = out.join("\n");
        text.push('\n');
        text
    }

    fn inbound_rules(&self) -> Vec<String> {
        let mut rules = vec![format!(
            "-A {INBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        )];
        let skipped = std::iter::once(PortRange {
            first: self.admin_port,
            last: self.admin_port,
        })
        .chain(self.skip_inbound_ports.iter().copied());
        rules.extend(skipped.map(|p| format!("-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN")));
        rules.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -j {INBOUND_REDIRECT_CHAIN}"
        ));
        rules
    }

    fn output_rules(&self, family: Family) -> Vec<String> {
        let uid = self.proxy_uid;
        let lo = family.loopback();
        let mut rules = vec![
            format!(
                "-A {OUTBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
                self.outbound_port
            ),
            // The inbound proxy reaching its app on the pod's IP: straight to the app, or it
            // would meet the inbound listener again (a loop, one connection per turn).
            format!(
                "-A {OUTPUT_CHAIN} -o lo -s {} -j RETURN",
                family.app_source()
            ),
            // The proxy calling its own pod's address (a Service whose endpoint is this pod)
            // leaves through lo: treat it as inbound so it meets the inbound proxy, not the app.
            format!(
                "-A {OUTPUT_CHAIN} -o lo ! -d {lo} -m owner --uid-owner {uid} -j {INBOUND_CHAIN}"
            ),
            // The app talking to itself over loopback or its own address stays direct.
            format!("-A {OUTPUT_CHAIN} -o lo -m owner ! --uid-owner {uid} -j RETURN"),
            // Everything else the proxy sends is already proxied.
            format!("-A {OUTPUT_CHAIN} -m owner --uid-owner {uid} -j RETURN"),
            format!("-A {OUTPUT_CHAIN} -d {lo} -j RETURN"),
        ];
        rules.extend(
            self.skip_outbound_ports
                .iter()
                .map(|p| format!("-A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN")),
        );
        rules.extend(
            self.skip_outbound_cidrs
                .iter()
                .filter(|c| family.contains(c))
                .map(|c| format!("-A {OUTPUT_CHAIN} -d {c} -j RETURN")),
        );
        rules.push(format!(
            "-A {OUTPUT_CHAIN} -p tcp -j {OUTBOUND_REDIRECT_CHAIN}"
        ));
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::ports::parse_list;

    fn configured() -> Redirect {
        Redirect {
            skip_inbound_ports: parse_list("22,8000-8010").unwrap(),
            skip_outbound_ports: parse_list("5432").unwrap(),
            skip_outbound_cidrs: parse_list("169.254.169.254/32,fd00::/8").unwrap(),
            ..Redirect::default()
        }
    }

    const GOLDEN_V4: &str = "\
# plexus-init: input for iptables-restore --noflush
*nat
:PLEXUS_INBOUND - [0:0]
:PLEXUS_INBOUND_REDIRECT - [0:0]
:PLEXUS_OUTPUT - [0:0]
:PLEXUS_OUTBOUND_REDIRECT - [0:0]
-A PLEXUS_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PLEXUS_INBOUND -p tcp --dport 15020 -j RETURN
-A PLEXUS_INBOUND -p tcp --dport 22 -j RETURN
-A PLEXUS_INBOUND -p tcp --dport 8000:8010 -j RETURN
-A PLEXUS_INBOUND -p tcp -j PLEXUS_INBOUND_REDIRECT
-A PLEXUS_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PLEXUS_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A PLEXUS_OUTPUT -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 2102 -j PLEXUS_INBOUND
-A PLEXUS_OUTPUT -o lo -m owner ! --uid-owner 2102 -j RETURN
-A PLEXUS_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A PLEXUS_OUTPUT -d 127.0.0.0/8 -j RETURN
-A PLEXUS_OUTPUT -p tcp --dport 5432 -j RETURN
-A PLEXUS_OUTPUT -d 169.254.169.254/32 -j RETURN
-A PLEXUS_OUTPUT -p tcp -j PLEXUS_OUTBOUND_REDIRECT
-A PREROUTING -p tcp -j PLEXUS_INBOUND
-A OUTPUT -p tcp -j PLEXUS_OUTPUT
COMMIT
";

    #[test]
    fn renders_the_golden_ipv4_rules() {
        assert_eq!(configured().render(Family::V4, ""), GOLDEN_V4);
    }

    #[test]
    fn ipv6_uses_its_loopback_and_only_its_own_cidrs() {
        let text = configured().render(Family::V6, "");
        assert!(text.contains(
            "-A PLEXUS_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 2102 -j PLEXUS_INBOUND\n"
        ));
        assert!(text.contains("-A PLEXUS_OUTPUT -d fd00::/8 -j RETURN\n"));
        assert!(text.contains("-A PLEXUS_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
        assert!(!text.contains("169.254.169.254"));
        assert!(!text.contains("127.0.0.0/8"));
    }

    #[test]
    fn rendering_again_after_applying_adds_no_second_jump() {
        let first = Redirect::default().render(Family::V4, "");
        // What iptables-save shows once the first input is applied (built-in chains included).
        let saved = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}\n{}\nCOMMIT\n",
            Redirect::jumps()[0],
            Redirect::jumps()[1]
        );
        let second = Redirect::default().render(Family::V4, &saved);
        assert!(first.contains("-A PREROUTING -p tcp -j PLEXUS_INBOUND\n"));
        assert!(!second.contains("-A PREROUTING"));
        assert!(!second.contains("-A OUTPUT "));
        // Our own chains are still declared (and so flushed) and rebuilt in full.
        let ours = |t: &str| t.lines().filter(|l| l.contains("PLEXUS_")).count();
        assert_eq!(ours(&first) - 2, ours(&second));
    }

    #[test]
    fn the_inbound_proxys_app_source_passes_before_the_proxy_uid_is_sent_inbound() {
        let text = Redirect::default().render(Family::V4, "");
        let source = text.find("-s 127.0.0.6/32 -j RETURN").unwrap();
        let to_inbound = text.find("-j PLEXUS_INBOUND\n").unwrap();
        assert!(source < to_inbound);
    }

    #[test]
    fn the_proxy_uid_is_excluded_before_any_redirect() {
        let text = Redirect {
            proxy_uid: 999,
            ..Redirect::default()
        }
        .render(Family::V4, "");
        let uid_return = text.find("-m owner --uid-owner 999 -j RETURN").unwrap();
        let redirect = text
            .find("-A PLEXUS_OUTPUT -p tcp -j PLEXUS_OUTBOUND_REDIRECT")
            .unwrap();
        assert!(uid_return < redirect);
    }
}

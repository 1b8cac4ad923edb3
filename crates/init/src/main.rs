//! `plexus-init`: installs the pod's redirect rules, or prints them with `--dry-run`.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use plexus_core::ports::{Cidr, ParseError, parse_list};
use plexus_init::rules::{Family, Redirect};
use plexus_init::{apply, ipv6};

/// Redirects the pod's TCP traffic through the Plexus proxy (run as an init container).
#[derive(Debug, Parser)]
#[command(name = "plexus-init", version)]
struct Args {
    /// UID the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "PLEXUS_INIT_PROXY_UID", default_value_t = 2102)]
    proxy_uid: u32,
    /// Port of the proxy's inbound listener.
    #[arg(long, env = "PLEXUS_INIT_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// Port of the proxy's outbound listener.
    #[arg(long, env = "PLEXUS_INIT_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// Port of the proxy's admin server, kept reachable from outside the pod.
    #[arg(long, env = "PLEXUS_INIT_ADMIN_PORT", default_value_t = 15020)]
    admin_port: u16,
    /// Inbound ports that bypass the proxy, comma-separated (`22,8000-8100`).
    #[arg(long, env = "PLEXUS_INIT_SKIP_INBOUND_PORTS", default_value = "")]
    skip_inbound_ports: String,
    /// Outbound destination ports that bypass the proxy, comma-separated.
    #[arg(long, env = "PLEXUS_INIT_SKIP_OUTBOUND_PORTS", default_value = "")]
    skip_outbound_ports: String,
    /// Outbound destination networks that bypass the proxy, comma-separated (`10.0.0.0/8,fd00::/8`).
    #[arg(long, env = "PLEXUS_INIT_SKIP_OUTBOUND_CIDRS", default_value = "")]
    skip_outbound_cidrs: String,
    /// Also write ip6tables rules: `auto` when the pod has a global IPv6 address.
    #[arg(long, env = "PLEXUS_INIT_IPV6", value_enum, default_value_t = Ipv6::Auto)]
    ipv6: Ipv6,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// The rules the flags describe; a bad list is an error naming its flag.
fn redirect(args: &Args) -> Result<Redirect, String> {
    fn named(flag: &'static str) -> impl Fn(ParseError) -> String {
        move |e| format!("--{flag}: {e}")
    }
    Ok(Redirect {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        skip_inbound_ports: parse_list(&args.skip_inbound_ports)
            .map_err(named("skip-inbound-ports"))?,
        skip_outbound_ports: parse_list(&args.skip_outbound_ports)
            .map_err(named("skip-outbound-ports"))?,
        skip_outbound_cidrs: parse_list::<Cidr>(&args.skip_outbound_cidrs)
            .map_err(named("skip-outbound-cidrs"))?,
    })
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let redirect = match redirect(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plexus-init: {e}");
            return ExitCode::from(2);
        }
    };
    let with_ipv6 = match args.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => std::fs::read_to_string("/proc/net/if_inet6")
            .map(|text| ipv6::has_routable_ipv6(&text))
            .unwrap_or(false),
    };
    let families: &[Family] = if with_ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &family in families {
        if args.dry_run {
            println!("# {family:?}\n{}", redirect.render(family, ""));
            continue;
        }
        if family == Family::V6
            && let Err(e) = apply::add_app_source_v6()
        {
            eprintln!("plexus-init: {e}");
            return ExitCode::FAILURE;
        }
        match apply::apply(&redirect, family) {
            Ok(applied) => eprintln!("plexus-init: applied {family:?} rules:\n{applied}"),
            Err(e) => {
                eprintln!("plexus-init: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

//! Applies the rules for real inside network namespaces these tests create: idempotence,
//! and where connections actually land (outbound listener, inbound listener, app, admin
//! port, or straight through) for the app's UID, the proxy's UID and another pod.
//!
//! Needs root, `ip`, `iptables`, `setpriv` and `bash`: `#[ignore]`d, run by `cargo xtask test`
//! when it can (or by `--include-ignored` / `--run-ignored all`); run without them, they fail.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use plexus_tests::bins::bin;
use plexus_tests::netns::{Netns, require_root_and, run};

const TOOLS: &[&str] = &["ip", "iptables-save", "iptables-restore", "setpriv", "bash"];

/// A namespace for this test run; `role` tells apart those of tests running at the same time.
fn netns(role: &str) -> Netns {
    Netns::create(format!("plexus-init-test-{}-{role}", std::process::id())).unwrap()
}

/// A non-blocking listening socket inside `ns`.
fn listen(ns: &Netns, addr: &str) -> TcpListener {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = ns.socket().unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

/// Connects to `ip:port` from `ns` as `uid`, then closes (bash's /dev/tcp).
fn connect_as(ns: &Netns, uid: u32, ip: &str, port: u16) {
    let uid_flag = format!("--reuid={uid}");
    let gid_flag = format!("--regid={uid}");
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    ns.exec(
        "setpriv",
        &[
            &uid_flag,
            &gid_flag,
            "--clear-groups",
            "timeout",
            "5",
            "bash",
            "-c",
            &script,
        ],
    )
    .unwrap_or_else(|e| panic!("uid {uid} -> {ip}:{port} did not connect: {e}"));
}

/// The nat table without the comment lines that carry a timestamp.
fn nat_rules(ns: &Netns) -> String {
    let saved = ns.exec("iptables-save", &["-t", "nat"]).unwrap();
    saved
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
fn rules_apply_in_a_namespace_and_a_second_run_changes_nothing() {
    require_root_and("rules_apply_in_a_namespace", TOOLS);
    let ns = netns("idem");
    let init = bin("plexus-init");
    let flags = [
        "--skip-inbound-ports",
        "22,8000-8010",
        "--skip-outbound-cidrs",
        "169.254.169.254/32",
        "--ipv6",
        "off",
    ];

    ns.exec(&init, &flags).unwrap();
    let first = nat_rules(&ns);
    for expected in [
        "-A PREROUTING -p tcp -j PLEXUS_INBOUND",
        "-A OUTPUT -p tcp -j PLEXUS_OUTPUT",
        "-A PLEXUS_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A PLEXUS_INBOUND -p tcp -m tcp --dport 8000:8010 -j RETURN",
        "-A PLEXUS_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A PLEXUS_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A PLEXUS_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A PLEXUS_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            first.lines().any(|l| l == expected),
            "missing `{expected}` in:\n{first}"
        );
    }

    ns.exec(&init, &flags).unwrap();
    assert_eq!(first, nat_rules(&ns), "a second run changed the rules");

    // A changed configuration replaces our chains rather than adding to them.
    ns.exec(&init, &["--skip-inbound-ports", "23", "--ipv6", "off"])
        .unwrap();
    let changed = nat_rules(&ns);
    assert!(changed.contains("--dport 23 -j RETURN"));
    assert!(!changed.contains("--dport 22 -j RETURN"));
    assert_eq!(
        changed.matches("-j PLEXUS_INBOUND\n").count(),
        2,
        "{changed}"
    );
}

/// Named listeners; tells which one a connection reached.
struct Listeners(Vec<(&'static str, TcpListener)>);

impl Listeners {
    /// The name of the one listener that accepted a connection within a generous bound.
    fn reached(&self) -> Vec<&'static str> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Vec<&'static str> = self
                .0
                .iter()
                .filter(|(_, l)| l.accept().is_ok())
                .map(|(name, _)| *name)
                .collect();
            if !got.is_empty() || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const APP_UID: u32 = 1000;
const PROXY_UID: u32 = 2102;
const POD_IP: &str = "10.99.1.2";
/// An address outside the pod, served from the other namespace.
const REMOTE_IP: &str = "10.99.2.9";

#[test]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
fn connections_land_where_the_design_says() {
    require_root_and("connections_land_where_the_design_says", TOOLS);
    // Two namespaces joined by a veth pair: the pod (10.99.1.2) and a peer (10.99.1.1,
    // also serving 10.99.2.9 as "somewhere else" for the pod's outbound calls).
    let pod = netns("pod");
    let peer = netns("peer");
    let (pod_if, peer_if) = (
        format!("pxp{}", std::process::id()),
        format!("pxq{}", std::process::id()),
    );
    run(
        "ip",
        &[
            "link", "add", &pod_if, "type", "veth", "peer", "name", &peer_if,
        ],
    )
    .unwrap();
    run("ip", &["link", "set", &pod_if, "netns", pod.name()]).unwrap();
    run("ip", &["link", "set", &peer_if, "netns", peer.name()]).unwrap();
    for (ns, ifname, addrs) in [
        (&pod, &pod_if, &["10.99.1.2/24"][..]),
        (&peer, &peer_if, &["10.99.1.1/24", "10.99.2.9/32"][..]),
    ] {
        for addr in addrs {
            ns.exec("ip", &["addr", "add", addr, "dev", ifname])
                .unwrap();
        }
        ns.exec("ip", &["link", "set", ifname, "up"]).unwrap();
    }
    pod.exec("ip", &["route", "add", "default", "via", "10.99.1.1"])
        .unwrap();

    pod.exec(
        bin("plexus-init"),
        &[
            "--skip-inbound-ports",
            "2222",
            "--skip-outbound-ports",
            "5432",
            "--ipv6",
            "off",
        ],
    )
    .unwrap();

    let listeners = Listeners(vec![
        ("outbound", listen(&pod, "127.0.0.1:15001")),
        ("inbound", listen(&pod, "0.0.0.0:15006")),
        ("admin", listen(&pod, "0.0.0.0:15020")),
        ("app", listen(&pod, "0.0.0.0:8080")),
        ("app-skipped-port", listen(&pod, "0.0.0.0:2222")),
        ("remote", listen(&peer, "10.99.2.9:80")),
        ("remote-skipped-port", listen(&peer, "10.99.2.9:5432")),
    ]);
    let cases: [(&str, &Netns, u32, &str, u16, &str); 10] = [
        ("app calls out", &pod, APP_UID, REMOTE_IP, 80, "outbound"),
        ("proxy calls out", &pod, PROXY_UID, REMOTE_IP, 80, "remote"),
        (
            "app calls a skipped port",
            &pod,
            APP_UID,
            REMOTE_IP,
            5432,
            "remote-skipped-port",
        ),
        ("peer calls the app", &peer, 0, POD_IP, 8080, "inbound"),
        (
            "peer calls the admin port",
            &peer,
            0,
            POD_IP,
            15020,
            "admin",
        ),
        (
            "peer calls a skipped port",
            &peer,
            0,
            POD_IP,
            2222,
            "app-skipped-port",
        ),
        (
            "proxy calls its own pod",
            &pod,
            PROXY_UID,
            POD_IP,
            8080,
            "inbound",
        ),
        (
            "app calls its own pod IP",
            &pod,
            APP_UID,
            POD_IP,
            8080,
            "app",
        ),
        (
            "app calls localhost",
            &pod,
            APP_UID,
            "127.0.0.1",
            8080,
            "app",
        ),
        (
            "proxy calls the app on localhost",
            &pod,
            PROXY_UID,
            "127.0.0.1",
            8080,
            "app",
        ),
    ];
    for (what, ns, uid, ip, port, expected) in cases {
        connect_as(ns, uid, ip, port);
        assert_eq!(
            listeners.reached(),
            [expected],
            "{what} (uid {uid} -> {ip}:{port})"
        );
    }
}

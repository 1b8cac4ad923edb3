//! Applies the rules for real inside network namespaces these tests create: idempotence,
//! and where connections actually land (outbound listener, inbound listener, app, admin
//! port, or straight through) for the app's UID, the proxy's UID and another pod.
//!
//! Needs root, `ip`, `iptables`, `setpriv` and `bash`; skipped (with a message) otherwise,
//! unless `PLEXUS_REQUIRE_ROOT_TESTS=1`, which turns the skip into a failure (CI sets it).

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A network namespace deleted when the test ends, pass or fail.
struct Netns(String);

impl Netns {
    /// `role` tells apart the namespaces of tests running at the same time.
    fn create(role: &str) -> Result<Self, String> {
        let name = format!("plexus-init-test-{}-{role}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Self(name);
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A listening socket inside this namespace (bound from a thread that joined it).
    fn listen(&self, addr: &str) -> TcpListener {
        let path = format!("/run/netns/{}", self.0);
        let addr = addr.to_string();
        std::thread::spawn(move || {
            let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: a valid namespace fd; setns only moves this short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            let listener = TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))?;
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok::<_, String>(listener)
        })
        .join()
        .expect("listener thread")
        .unwrap()
    }

    /// Connects to `ip:port` from this namespace as `uid`, then closes (bash's /dev/tcp).
    fn connect_as(&self, uid: u32, ip: &str, port: u16) {
        let uid_flag = format!("--reuid={uid}");
        let gid_flag = format!("--regid={uid}");
        let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
        self.exec(
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

    fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.0.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "{program} {args:?}: {status}: {}",
            String::from_utf8_lossy(&stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    ["ip", "iptables-save", "iptables-restore", "setpriv", "bash"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("--version").output().is_err())
        .map(|tool| format!("`{tool}` not installed (apt-get install iproute2 iptables)"))
}

fn skip_or_fail() -> bool {
    let Some(why) = missing_prerequisite() else {
        return false;
    };
    assert!(
        std::env::var("PLEXUS_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
        "PLEXUS_REQUIRE_ROOT_TESTS=1 but this test cannot run: {why}"
    );
    eprintln!("skipping network-namespace test: {why}");
    true
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
fn rules_apply_in_a_namespace_and_a_second_run_changes_nothing() {
    if skip_or_fail() {
        return;
    }
    let ns = Netns::create("idem").unwrap();
    let init = env!("CARGO_BIN_EXE_plexus-init");
    let flags = [
        "--skip-inbound-ports",
        "22,8000-8010",
        "--skip-outbound-cidrs",
        "169.254.169.254/32",
        "--ipv6",
        "off",
    ];

    ns.exec(init, &flags).unwrap();
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

    ns.exec(init, &flags).unwrap();
    assert_eq!(first, nat_rules(&ns), "a second run changed the rules");

    // A changed configuration replaces our chains rather than adding to them.
    ns.exec(init, &["--skip-inbound-ports", "23", "--ipv6", "off"])
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
fn connections_land_where_the_design_says() {
    if skip_or_fail() {
        return;
    }
    // Two namespaces joined by a veth pair: the pod (10.99.1.2) and a peer (10.99.1.1,
    // also serving 10.99.2.9 as "somewhere else" for the pod's outbound calls).
    let pod = Netns::create("pod").unwrap();
    let peer = Netns::create("peer").unwrap();
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
    run("ip", &["link", "set", &pod_if, "netns", &pod.0]).unwrap();
    run("ip", &["link", "set", &peer_if, "netns", &peer.0]).unwrap();
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
        env!("CARGO_BIN_EXE_plexus-init"),
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
        ("outbound", pod.listen("127.0.0.1:15001")),
        ("inbound", pod.listen("0.0.0.0:15006")),
        ("admin", pod.listen("0.0.0.0:15020")),
        ("app", pod.listen("0.0.0.0:8080")),
        ("app-skipped-port", pod.listen("0.0.0.0:2222")),
        ("remote", peer.listen("10.99.2.9:80")),
        ("remote-skipped-port", peer.listen("10.99.2.9:5432")),
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
        ns.connect_as(uid, ip, port);
        assert_eq!(
            listeners.reached(),
            [expected],
            "{what} (uid {uid} -> {ip}:{port})"
        );
    }
}

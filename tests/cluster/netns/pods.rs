//! Pods on network namespaces: the closest thing to a Kubernetes node that a
//! machine without Kubernetes allows.
//!
//! Each test builds its own "node": a namespace holding a bridge (10.203.0.1)
//! and the controller, and three "pods", namespaces with a veth on that
//! bridge. Pods `a` and `b` are meshed: `plexus-init` wrote their iptables
//! rules for real and a `plexus-proxy` runs in each as UID 2102; pod `c` is
//! not meshed. The controller reads a file of Kubernetes objects describing
//! them: the Service `web` with a ClusterIP (10.203.100.10) that no interface
//! carries, its EndpointSlice (pod `b`, port 8080), and the pods. Only the
//! iptables redirect can deliver a call to that ClusterIP; a packet that
//! escaped it would die in the node, which has no route anywhere else.
//! Nothing is added to the host's own namespace.
//!
//! The apps are this test process: a socket belongs to the namespace it was
//! created in, and the app's UID (root) is not the proxy's.
//!
//! Root only: `#[ignore]`d, run by `cargo xtask test` when it can (or by
//! `--include-ignored` / `--run-ignored all`); run without root, they fail.

use std::convert::Infallible;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plexus_tests::bins::bin;
use plexus_tests::http::{Reply, get_over};
use plexus_tests::netns::{Netns, remove_stale, require_root_and};
use plexus_tests::wait::within;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Every wait is bounded by this (generous: a loaded CI machine).
const BOUND: Duration = Duration::from_secs(30);
/// One request or connection attempt.
const ATTEMPT: Duration = Duration::from_secs(10);

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 100, 10);
const SERVICE_PORT: u16 = 80;
const APP_PORT: u16 = 8080;
/// Pod `b`'s port that listens on 127.0.0.1 only: not for other pods, mesh or not.
const LOOPBACK_ONLY_PORT: u16 = 8081;
/// A port pod `a` skips (`plexus.io/skip-outbound-ports`), served by pod `c`.
const SKIPPED_PORT: u16 = 9999;
/// A port pod `a` does not skip, also served by pod `c`.
const PROXIED_PORT: u16 = 9998;
const CONTROLLER_GRPC: SocketAddr = SocketAddr::new(IpAddr::V4(NODE_IP), 8090);
const CONTROLLER_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9990);
const PROXY_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);
const PROXY_UID: u32 = 2102;

/// Every namespace of these tests is `<prefix>-<pid>-<test>-<role>`.
const NETNS_PREFIX: &str = "plexus-pods";
const NAMESPACE: &str = "shop";
const SERVICE_HOST: &str = "web.shop.svc.cluster.local";
const TRUST_DOMAIN: &str = "cluster.local";
/// The rule `plexus-init` writes for the proxy's own traffic, as `iptables-save` prints it.
const PROXY_UID_RULE: &str = "-A PLEXUS_OUTPUT -m owner --uid-owner 2102 -j RETURN";
/// The rule that sends the app's outbound connections to the proxy.
const REDIRECT_RULE: &str = "-A PLEXUS_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001";
/// Every connection to the inbound listener, from another pod or looped back by the proxy.
const INBOUND_RULE: &str = "-A PLEXUS_INBOUND -p tcp -j PLEXUS_INBOUND_REDIRECT";
/// The inbound proxy's connections to its app, let through.
const APP_SOURCE_RULE: &str = "-A PLEXUS_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN";

/// A pod of the file feed and its namespace.
struct PodSpec {
    name: &'static str,
    ip: Ipv4Addr,
    service_account: &'static str,
    meshed: bool,
}

const A: PodSpec = PodSpec {
    name: "a",
    ip: Ipv4Addr::new(10, 203, 0, 2),
    service_account: "client",
    meshed: true,
};
const B: PodSpec = PodSpec {
    name: "b",
    ip: Ipv4Addr::new(10, 203, 0, 3),
    service_account: "web",
    meshed: true,
};
const C: PodSpec = PodSpec {
    name: "c",
    ip: Ipv4Addr::new(10, 203, 0, 4),
    service_account: "legacy",
    meshed: false,
};

fn spiffe_id(pod: &PodSpec) -> String {
    format!(
        "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
        pod.service_account
    )
}

/// The objects the controller reads: what a cluster would hold for these pods.
/// `b_mtls_mode` is pod `b`'s `plexus.io/mtls-mode` annotation.
fn objects(b_mtls_mode: &str) -> String {
    let pod = |spec: &PodSpec, annotations: Value| {
        let containers = if spec.meshed {
            json!([{"name": "app"}, {"name": "plexus-proxy"}])
        } else {
            json!([{"name": "app"}])
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": spec.name, "namespace": NAMESPACE, "annotations": annotations},
            "spec": {"serviceAccountName": spec.service_account, "containers": containers},
            "status": {"phase": "Running", "podIP": spec.ip.to_string(),
                       "podIPs": [{"ip": spec.ip.to_string()}]},
        })
    };
    let documents = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": NAMESPACE},
            "spec": {"clusterIP": SERVICE_IP.to_string(), "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": APP_PORT, "protocol": "TCP"}]},
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": APP_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [B.ip.to_string()], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": B.name, "namespace": NAMESPACE}}],
        }),
        pod(
            &A,
            json!({"plexus.io/inject": "enabled",
                   "plexus.io/skip-outbound-ports": SKIPPED_PORT.to_string()}),
        ),
        pod(
            &B,
            json!({"plexus.io/inject": "enabled", "plexus.io/mtls-mode": b_mtls_mode}),
        ),
        pod(&C, json!({})),
    ];
    // JSON is YAML: one document each.
    documents
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A request pod `b`'s app received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    peer: SocketAddr,
    local: SocketAddr,
    client_id: Option<String>,
}

/// The node, its pods and their processes; all removed on drop, pass or fail.
struct World {
    dir: PathBuf,
    /// Killed (before the namespaces go) on drop.
    processes: Vec<(String, Child)>,
    seen: Arc<Mutex<Vec<Seen>>>,
    // Declared last: dropped after `drop` stopped the processes inside them.
    pods: [Netns; 3],
    node: Netns,
}

impl World {
    /// Builds the node and its pods, starts the controller and the proxies,
    /// and waits until they are ready. Fails when this machine cannot.
    async fn start(test: &str) -> Self {
        require_root_and(
            &format!("the network-namespace pods test `{test}`"),
            &[
                "ip",
                "iptables",
                "iptables-save",
                "iptables-restore",
                "setpriv",
            ],
        );
        // Fail before touching the network when the binaries are not built.
        let (controller, proxy, init) = (
            bin("plexus-controller"),
            bin("plexus-proxy"),
            bin("plexus-init"),
        );
        remove_stale(NETNS_PREFIX);
        // Unique per test and run: namespace names are global.
        let prefix = format!("{NETNS_PREFIX}-{}-{test}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the test's directory");
        let netns = |role: &str| Netns::create(format!("{prefix}-{role}")).unwrap();
        let mut world = Self {
            dir,
            processes: Vec::new(),
            seen: Arc::default(),
            node: netns("node"),
            pods: [netns(A.name), netns(B.name), netns(C.name)],
        };
        world.wire();
        world.write_objects("permissive");
        world.start_controller(&controller).await;
        for pod in [&A, &B] {
            world.mesh(pod, &init, &proxy).await;
        }
        world.start_apps();
        world
    }

    fn pod(&self, spec: &PodSpec) -> &Netns {
        match spec.name {
            "a" => &self.pods[0],
            "b" => &self.pods[1],
            _ => &self.pods[2],
        }
    }

    /// The bridge in the node, and each pod's veth on it with a default route
    /// to the node (so a ClusterIP leaves the pod unless iptables catches it).
    fn wire(&self) {
        let node = &self.node;
        node.exec("ip", &["link", "add", "br0", "type", "bridge"])
            .unwrap();
        node.exec(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"],
        )
        .unwrap();
        node.exec("ip", &["link", "set", "br0", "up"]).unwrap();
        for spec in [&A, &B, &C] {
            let pod = self.pod(spec);
            let host_end = format!("veth-{}", spec.name);
            node.exec(
                "ip",
                &[
                    "link",
                    "add",
                    &host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    pod.name(),
                ],
            )
            .unwrap();
            node.exec("ip", &["link", "set", &host_end, "master", "br0", "up"])
                .unwrap();
            pod.exec(
                "ip",
                &["addr", "add", &format!("{}/24", spec.ip), "dev", "eth0"],
            )
            .unwrap();
            pod.exec("ip", &["link", "set", "eth0", "up"]).unwrap();
            pod.exec(
                "ip",
                &["route", "add", "default", "via", &NODE_IP.to_string()],
            )
            .unwrap();
        }
    }

    fn objects_path(&self) -> PathBuf {
        self.dir.join("objects.yaml")
    }

    /// (Re)writes the feed file; the controller notices the change and reloads.
    fn write_objects(&self, b_mtls_mode: &str) {
        // Whole file at once: the controller never reads half of it.
        let staging = self.dir.join("objects.yaml.new");
        std::fs::write(&staging, objects(b_mtls_mode)).unwrap();
        std::fs::rename(&staging, self.objects_path()).unwrap();
    }

    /// Starts `command`, its output in `<dir>/<name>.log` (printed if the test fails).
    fn spawn(&mut self, name: &str, mut command: std::process::Command) {
        let log = File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.processes.push((name.to_string(), child));
    }

    async fn start_controller(&mut self, controller: &PathBuf) {
        let mut command = self.node.command(controller);
        command
            .arg(format!("--feed=file:{}", self.objects_path().display()))
            .arg(format!("--grpc-addr={CONTROLLER_GRPC}"))
            .arg(format!("--admin-addr={CONTROLLER_ADMIN}"))
            .arg(format!("--ca-dir={}", self.dir.join("ca").display()))
            .arg(format!(
                "--bootstrap-token-dir={}",
                self.dir.join("tokens").display()
            ))
            .env("PLEXUS_LOG", "info");
        self.spawn("controller", command);
        let node = &self.node;
        eventually("the controller is ready", || async move {
            let reply = request(node, CONTROLLER_ADMIN, "controller", "/ready", &[]).await?;
            ok(&reply)
        })
        .await;
    }

    /// What the injector would do to a pod: `plexus-init`'s rules, then the
    /// proxy as UID 2102 with its identity (bootstrap token, trust anchors).
    async fn mesh(&mut self, spec: &PodSpec, init: &PathBuf, proxy: &PathBuf) {
        let token = self
            .dir
            .join("tokens")
            .join(format!("{NAMESPACE}.{}.token", spec.service_account));
        eventually(&format!("a bootstrap token for pod {}", spec.name), || {
            let token = &token;
            async move {
                match token.exists() {
                    true => Ok(()),
                    false => Err(format!("{} absent", token.display())),
                }
            }
        })
        .await;
        // The proxy's own copies, readable by its UID only (as a projected token is).
        let own = self.dir.join(format!("pod-{}", spec.name));
        std::fs::create_dir_all(&own).unwrap();
        for (from, to) in [
            (token.clone(), own.join("token")),
            (self.dir.join("ca").join("ca.crt"), own.join("ca.crt")),
        ] {
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
            std::os::unix::fs::chown(&to, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        }

        let pod = self.pod(spec);
        let skip = if spec.name == A.name {
            SKIPPED_PORT.to_string()
        } else {
            String::new()
        };
        pod.exec(init, &["--skip-outbound-ports", &skip, "--ipv6", "off"])
            .unwrap_or_else(|e| panic!("plexus-init in pod {}: {e}", spec.name));

        let mut command = pod.command("setpriv");
        command
            .args([
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
            ])
            .arg(proxy)
            .env("PLEXUS_LOG", "info,plexus_proxy=debug")
            .env("PLEXUS_CONTROLLER_ADDR", CONTROLLER_GRPC.to_string())
            .env("PLEXUS_IDENTITY", spiffe_id(spec))
            .env("PLEXUS_IDENTITY_TOKEN_FILE", own.join("token"))
            .env("PLEXUS_IDENTITY_TRUST_ANCHORS", own.join("ca.crt"))
            .env("PLEXUS_IDENTITY_ADDR", CONTROLLER_GRPC.to_string())
            .env("PLEXUS_POD_NAME", spec.name)
            .env("PLEXUS_POD_NAMESPACE", NAMESPACE)
            .env("PLEXUS_POD_IP", spec.ip.to_string())
            .env("PLEXUS_SERVICE_ACCOUNT", spec.service_account)
            .env("PLEXUS_WORKLOAD", spec.name)
            // On, so another pod's refusal shows the loopback check, not the default.
            .env("PLEXUS_SHUTDOWN_ENDPOINT", "enabled");
        self.spawn(&format!("proxy-{}", spec.name), command);
        let pod = self.pod(spec);
        eventually(
            &format!("pod {}'s proxy is ready", spec.name),
            || async move {
                let reply = request(pod, PROXY_ADMIN, "admin", "/ready", &[]).await?;
                ok(&reply)
            },
        )
        .await;
    }

    /// Pod `b`'s app on :8080 (it tells who called it), and pod `c`'s echo of
    /// the caller's address on two ports.
    fn start_apps(&self) {
        let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let app = self.pod(&B).listen(any(APP_PORT)).unwrap();
        tokio::spawn(serve_app(app, self.seen.clone()));
        for port in [SKIPPED_PORT, PROXIED_PORT] {
            let echo = self.pod(&C).listen(any(port)).unwrap();
            tokio::spawn(echo_peer(echo));
        }
    }

    /// The app in `from` calls the Service by its ClusterIP.
    async fn call_service(&self, from: &PodSpec, path: &str) -> Result<Reply, String> {
        let addr = SocketAddr::new(IpAddr::V4(SERVICE_IP), SERVICE_PORT);
        request(self.pod(from), addr, SERVICE_HOST, path, &[]).await
    }

    /// What pod `b`'s app saw for `path`.
    fn seen(&self, path: &str) -> Option<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().find(|s| s.path == path).cloned()
    }

    async fn proxy_metrics(&self, spec: &PodSpec) -> String {
        let reply = request(self.pod(spec), PROXY_ADMIN, "admin", "/metrics", &[])
            .await
            .unwrap_or_else(|e| panic!("pod {}'s /metrics: {e}", spec.name));
        assert!(reply.status.is_success(), "/metrics: {reply:?}");
        reply.body
    }

    /// How many file descriptors the process `name` holds.
    fn open_fds(&self, name: &str) -> usize {
        let (_, child) = self
            .processes
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        // setpriv execs the proxy: the child's pid is the proxy's.
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .unwrap_or_else(|e| panic!("{name}'s descriptors: {e}"))
            .count()
    }

    /// Packets (first packets of connections, in the nat table) that matched
    /// `rule` in `spec`'s namespace.
    fn nat_matches(&self, spec: &PodSpec, rule: &str) -> u64 {
        let saved = self
            .pod(spec)
            .exec("iptables-save", &["-c", "-t", "nat"])
            .unwrap();
        saved
            .lines()
            .find_map(|line| {
                let (counters, text) = line.split_once("] ")?;
                (text == rule).then_some(counters)
            })
            .and_then(|counters| counters.trim_start_matches('[').split(':').next())
            .and_then(|packets| packets.parse().ok())
            .unwrap_or_else(|| panic!("no `{rule}` with counters in:\n{saved}"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for (name, _) in &self.processes {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("----- {name} (last 40 lines) -----\n{tail}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `probe` until it succeeds, at most [`BOUND`]; panics with its last error.
async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    within(BOUND, what, probe).await
}

fn ok(reply: &Reply) -> Result<(), String> {
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("{} {}", reply.status, reply.body))
    }
}

/// One HTTP/1.1 GET from inside `from`, bounded by [`ATTEMPT`].
async fn request(
    from: &Netns,
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let exchange = async {
        let stream = from
            .connect(addr, ATTEMPT)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        get_over(stream, authority, path, headers).await
    };
    tokio::time::timeout(ATTEMPT, exchange)
        .await
        .map_err(|_| format!("GET {addr}{path}: no answer within {ATTEMPT:?}"))?
}

/// Pod `b`'s app: records each request and answers `b-app <path>`.
async fn serve_app(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>) {
    while let Ok((stream, peer)) = listener.accept().await {
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let seen = seen.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let client_id = request
                .headers()
                .get("plexus-client-id")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let path = request.uri().path().to_string();
            let body = format!("b-app {path}");
            seen.lock().unwrap().push(Seen {
                path,
                peer,
                local,
                client_id,
            });
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
        });
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Counts the connections an app port accepts (and closes them).
async fn count_accepts(listener: TcpListener, accepted: Arc<AtomicUsize>) {
    while listener.accept().await.is_ok() {
        accepted.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pod `c`'s echo: reads a line, answers with the caller's address as it sees it.
async fn echo_peer(listener: TcpListener) {
    while let Ok((stream, peer)) = listener.accept().await {
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            if stream.read_line(&mut line).await.is_ok() {
                let _ = stream.write_all(format!("{peer}\n").as_bytes()).await;
            }
        });
    }
}

/// Sum of the samples of `name` whose labels include every one of `labels`
/// (each as written in the exposition, e.g. `direction="outbound"`).
fn sample_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.rsplit_once("} "))
        .filter(|(set, _)| labels.iter().all(|label| set.contains(label)))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

const REQUESTS: &str = "plexus_proxy_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn an_app_calling_the_service_ip_is_intercepted_and_reaches_b() {
    let world = World::start("intercept").await;
    let outbound_ok = [r#"direction="outbound""#, r#"status="200""#];
    let before = sample_sum(&world.proxy_metrics(&A).await, REQUESTS, &outbound_ok);

    let reply = world.call_service(&A, "/intercepted").await;
    let reply = reply.expect("pod a's call to the Service's ClusterIP is answered");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "b-app /intercepted"),
        "pod b's app answers the call to the ClusterIP: {reply:?}"
    );
    assert!(
        world.seen("/intercepted").is_some(),
        "pod b's app received the request"
    );
    let metrics = world.proxy_metrics(&A).await;
    assert_eq!(
        sample_sum(&metrics, REQUESTS, &outbound_ok) - before,
        1.0,
        "pod a's proxy counts the intercepted request as outbound 200:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn the_request_crosses_to_b_over_mtls_and_reaches_its_app_on_the_pod_ip() {
    let world = World::start("mtls").await;
    let reply = world.call_service(&A, "/over-mtls").await;
    let reply = reply.expect("pod a's call to the Service is answered");
    assert_eq!(reply.status.as_u16(), 200, "{reply:?}");
    let seen = world
        .seen("/over-mtls")
        .expect("pod b's app received the request");
    assert_eq!(
        seen.client_id.as_deref(),
        Some(spiffe_id(&A).as_str()),
        "pod b's proxy authenticated pod a's certificate and told the app: {seen:?}"
    );
    assert_eq!(
        (seen.peer.ip(), seen.local.ip()),
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)), IpAddr::V4(B.ip)),
        "pod b's proxy hands the request to the app on the pod's IP from 127.0.0.6: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn a_loopback_only_app_port_is_unreachable_from_another_pod_and_nothing_loops() {
    let world = World::start("loopback-only").await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let loopback_only = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), LOOPBACK_ONLY_PORT);
    let listener = world.pod(&B).listen(loopback_only).unwrap();
    tokio::spawn(count_accepts(listener, accepted.clone()));

    let (inbound, app_source) = (
        world.nat_matches(&B, INBOUND_RULE),
        world.nat_matches(&B, APP_SOURCE_RULE),
    );
    let hidden = SocketAddr::new(IpAddr::V4(B.ip), LOOPBACK_ONLY_PORT);
    let reply = request(world.pod(&C), hidden, "b", "/hidden", &[]).await;
    let reply = reply.expect("pod b's proxy answers for the loopback-only port");
    assert_eq!(
        reply.status.as_u16(),
        502,
        "the app on 127.0.0.1:{LOOPBACK_ONLY_PORT} is not reachable on the pod IP: {reply:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the app saw nothing");

    let real = SocketAddr::new(IpAddr::V4(B.ip), APP_PORT);
    let reply = request(world.pod(&C), real, "b", "/real-port", &[]).await;
    let reply = reply.expect("pod c reaches the app's real port, bound to 0.0.0.0");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "b-app /real-port")
    );
    assert_eq!(
        world.nat_matches(&B, INBOUND_RULE) - inbound,
        2,
        "one connection to b's inbound listener per call: the proxy's to its app never loops"
    );
    assert_eq!(
        world.nat_matches(&B, APP_SOURCE_RULE) - app_source,
        2,
        "each call's one connection to the app left from 127.0.0.6 (the refused one too)"
    );
    let fds = world.open_fds("proxy-b");
    assert!(fds < 200, "pod b's proxy holds {fds} file descriptors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn a_non_meshed_pod_reaches_b_when_permissive_and_is_refused_when_strict() {
    let world = World::start("policy").await;
    let b_app = SocketAddr::new(IpAddr::V4(B.ip), APP_PORT);
    // A plaintext caller claiming pod a's identity: the header must not pass as proof.
    let forged = [("plexus-client-id", spiffe_id(&A))];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(n, v)| (*n, v.as_str())).collect();

    let reply = request(world.pod(&C), b_app, "b", "/permissive", &forged).await;
    let reply = reply.expect("pod c reaches pod b in PERMISSIVE");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "b-app /permissive"),
        "PERMISSIVE: pod c's plaintext call reaches b's app: {reply:?}"
    );
    let permissive = world
        .seen("/permissive")
        .expect("pod b's app saw pod c's call");
    assert!(
        permissive.peer.ip().is_loopback(),
        "pod c's call went through b's proxy (redirected inbound): {permissive:?}"
    );

    world.write_objects("strict");
    let mut attempt = 0;
    let refused = eventually("pod b's proxy refuses pod c once STRICT", || {
        attempt += 1;
        let path = format!("/strict-{attempt}");
        let world = &world;
        async move {
            match request(world.pod(&C), b_app, "b", &path, &[]).await {
                Ok(reply) if reply.status.is_success() => Err(format!("still answered {path}")),
                refusal => Ok((path, refusal)),
            }
        }
    })
    .await;
    assert!(
        world.seen(&refused.0).is_none(),
        "STRICT: pod c's refused call never reached b's app: {refused:?}"
    );

    let reply = world.call_service(&A, "/strict-from-a").await;
    let reply = reply.expect("pod a's call is answered in STRICT");
    assert_eq!(
        reply.status.as_u16(),
        200,
        "STRICT: the meshed pod a still reaches b over mTLS: {reply:?}"
    );
    let seen = world.seen("/strict-from-a").expect("b's app saw a's call");
    assert_eq!(seen.client_id.as_deref(), Some(spiffe_id(&A).as_str()));

    world.write_objects("permissive");
    eventually("pod c reaches b again once PERMISSIVE", || {
        let world = &world;
        async move { ok(&request(world.pod(&C), b_app, "b", "/permissive-again", &[]).await?) }
    })
    .await;

    assert_eq!(
        permissive.client_id, None,
        "a plaintext client's own plexus-client-id header does not reach the app: {permissive:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn the_proxys_own_connections_are_not_looped_back() {
    let world = World::start("no-loop").await;
    // Ready means pod a's proxy has already talked to the controller.
    let direct = world.nat_matches(&A, PROXY_UID_RULE);
    assert!(
        direct >= 1,
        "pod a's proxy connected out (to the controller) as UID 2102, bypassing the redirect"
    );
    assert_eq!(
        world.nat_matches(&A, REDIRECT_RULE),
        0,
        "none of the proxy's connections was redirected back to itself"
    );
    let metrics = world.proxy_metrics(&A).await;
    assert_eq!(
        sample_sum(&metrics, REQUESTS, &[r#"direction="outbound""#]),
        0.0,
        "pod a's outbound side counted no request of its own (the controller's):\n{metrics}"
    );

    let reply = world.call_service(&A, "/one-call").await;
    let reply = reply.expect("pod a's call to the Service is answered");
    assert_eq!(reply.status.as_u16(), 200, "{reply:?}");
    assert_eq!(
        world.nat_matches(&A, REDIRECT_RULE),
        1,
        "exactly one connection (the app's) was redirected; the proxy's to b was not"
    );
    assert!(
        world.nat_matches(&A, PROXY_UID_RULE) > direct,
        "the proxy's connection to pod b left directly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn a_skipped_port_bypasses_the_proxy() {
    let world = World::start("skip").await;
    // Pod c answers with the caller's address: the app's own socket address
    // when the connection is direct, the proxy's when it went through it.
    let caller_as_seen_by_c = |port: u16| {
        let world = &world;
        async move {
            let addr = SocketAddr::new(IpAddr::V4(C.ip), port);
            let exchange = async {
                let stream = world.pod(&A).connect(addr, ATTEMPT).await?;
                let local = stream.local_addr()?;
                let mut stream = BufReader::new(stream);
                stream.write_all(b"who am i\n").await?;
                let mut line = String::new();
                stream.read_line(&mut line).await?;
                Ok::<_, std::io::Error>((local, line.trim().to_string()))
            };
            tokio::time::timeout(ATTEMPT, exchange)
                .await
                .unwrap_or_else(|_| panic!("pod c:{port} answered within {ATTEMPT:?}"))
                .unwrap_or_else(|e| panic!("pod a -> pod c:{port}: {e}"))
        }
    };
    let redirected = world.nat_matches(&A, REDIRECT_RULE);
    let (local, seen) = caller_as_seen_by_c(SKIPPED_PORT).await;
    assert_eq!(
        seen,
        local.to_string(),
        "skipped port {SKIPPED_PORT}: pod c sees the app's own socket (no proxy between)"
    );
    assert_eq!(
        world.nat_matches(&A, REDIRECT_RULE),
        redirected,
        "the skipped port's connection was not redirected"
    );

    // The same call to a port that is not skipped goes through the proxy.
    let (local, seen) = caller_as_seen_by_c(PROXIED_PORT).await;
    assert_ne!(
        seen,
        local.to_string(),
        "port {PROXIED_PORT} (not skipped) goes through pod a's proxy"
    );
    assert_eq!(world.nat_matches(&A, REDIRECT_RULE), redirected + 1);
}

/// `POST /shutdown` from inside `from` to `addr`, the raw answer (status line to body).
async fn post_shutdown(from: &Netns, addr: SocketAddr) -> String {
    let exchange = async {
        let mut stream = from.connect(addr, ATTEMPT).await?;
        stream
            .write_all(b"POST /shutdown HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    tokio::time::timeout(ATTEMPT, exchange)
        .await
        .unwrap_or_else(|_| panic!("POST {addr}/shutdown answered within {ATTEMPT:?}"))
        .unwrap_or_else(|e| panic!("POST {addr}/shutdown: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "root-only: needs root, ip and iptables; cargo xtask test runs them when it can"]
async fn another_pod_cannot_drain_or_read_a_proxy_but_can_probe_and_scrape_it() {
    let world = World::start("admin").await;
    let b_admin = SocketAddr::new(IpAddr::V4(B.ip), PROXY_ADMIN.port());

    let answer = post_shutdown(world.pod(&C), b_admin).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(
        answer.contains("\r\nplexus-error: forbidden\r\n"),
        "{answer}"
    );
    assert!(answer.contains(&format!("not {}", C.ip)), "{answer}");
    let config = request(world.pod(&C), b_admin, "admin", "/config", &[]).await;
    let config = config.expect("pod b's /config answers pod c");
    assert_eq!(config.status.as_u16(), 403, "{config:?}");
    for path in ["/live", "/ready", "/metrics"] {
        let reply = request(world.pod(&C), b_admin, "admin", path, &[]).await;
        ok(&reply.unwrap_or_else(|e| panic!("{path}: {e}")))
            .unwrap_or_else(|e| panic!("{path} from pod c: {e}"));
    }

    // Pod b's proxy did not drain: it still serves pod a's calls.
    let reply = world.call_service(&A, "/after-remote-shutdown").await;
    let reply = reply.expect("pod a's call is answered after pod c's POST /shutdown");
    assert_eq!(reply.status.as_u16(), 200, "{reply:?}");
    // Pod b itself (loopback) may read its proxy's config.
    let config = request(world.pod(&B), PROXY_ADMIN, "admin", "/config", &[]).await;
    ok(&config.expect("pod b's own /config")).expect("/config from loopback");
}

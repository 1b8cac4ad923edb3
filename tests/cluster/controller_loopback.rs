//! Issue 3's loopback test: the real `plexus-controller` on a file feed and
//! two real `plexus-proxy` processes taking their destinations from it, with
//! the Service's pods as small HTTP servers in this test. Clients call the
//! Service through both proxies without a pause while the endpoint set
//! changes, while the controller is killed and restarted, while an editor
//! truncates and rewrites the file, and while a broken version of a route
//! is written over a good one (issue 15): not one request may fail.
//!
//! The proxies are binaries, not in-process `Proxy`s: the test then runs
//! exactly what is deployed (environment parsing, the binary's runtime), the
//! proxies' state cannot leak into this process's, and the test does not
//! build against proxy internals that change under it. The controller must
//! be a binary anyway, so it can be SIGKILLed.
//!
//! Needs `cargo build --workspace --bins` first (or `PLEXUS_BIN_DIR`).
//! `--nocapture` shows the figures.

mod feed;
pub(crate) mod processes;
mod traffic;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use feed::{BROKEN_SPLIT, CANARY, Feed, NAMESPACE, SERVICE, SPLIT};
use plexus_tests::http::{Reply, get_over};
use plexus_tests::temp::TempDir;
use plexus_tests::wait::within;
use processes::{Controller, Proxy};
use tokio::time::Instant;
use traffic::{Client, Traffic};
use upstream::Upstream;

/// Generous bound for starting things and for single requests.
const BOUND: Duration = Duration::from_secs(30);
/// How long a change of the file may take to show in the proxies' traffic
/// (the feed polls every 250 ms; a loaded 2-core machine is slow).
const PICKUP_BOUND: Duration = Duration::from_secs(20);
/// How many proxies, and clients per proxy.
const PROXIES: usize = 2;
const CLIENTS_PER_PROXY: usize = 2;
/// Requests each proxy must complete while an upstream's counter stands
/// still before the test believes no proxy sends to it any more.
const QUIET_REQUESTS: u64 = 100;
/// Requests each proxy must complete while the controller is down, and
/// after each change before the next.
const OUTAGE_REQUESTS: u64 = 600;
const SETTLE_REQUESTS: u64 = 200;
/// Truncate-then-write edits of the file under traffic.
const EDITS: usize = 3;

/// The Service as each proxy's clients name it: the short name (the proxy's
/// namespace is `shop`) and the full DNS name.
const HOSTS: [&str; PROXIES] = ["web", "web.shop.svc.cluster.local"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_and_removed_gracefully_under_traffic_fail_no_request() {
    let mut mesh = Mesh::start("endpoints", 2).await;
    let traffic = Traffic::start(mesh.clients());
    mesh.wait_all_serving(&traffic, "before any change").await;

    // Scale up: a new pod, then the file that lists it.
    mesh.add_upstream().await;
    let changed = Instant::now();
    mesh.write_feed(&[]);
    mesh.wait_serving(&traffic, 2, "the added web-3").await;
    let added_after = changed.elapsed();
    settle(&traffic, "after web-3 was added").await;

    // Scale down gracefully: web-1 terminating first, out of the file and
    // stopped only once no proxy sends to it.
    let changed = Instant::now();
    mesh.write_feed(&[0]);
    let drained_after = mesh.wait_drained(&traffic, 0, changed).await;
    mesh.upstreams[0].removed = true;
    mesh.write_feed(&[]);
    let web1 = mesh.upstreams[0].upstream.served();
    mesh.upstreams.remove(0).upstream.stop().await;
    mesh.wait_all_serving(&traffic, "after web-1 left").await;
    settle(&traffic, "after web-1 left").await;

    mesh.stop_traffic(traffic, "endpoint changes", || {
        format!(
            "; web-3 added: traffic through both proxies after {added_after:.1?}; web-1 \
             terminating: its last request {drained_after:.1?} after the change (it served {web1})"
        )
    })
    .await;
    assert!(added_after < PICKUP_BOUND && drained_after < PICKUP_BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_and_restarted_under_traffic_fails_no_request() {
    let mut mesh = Mesh::start("restart", 2).await;
    let traffic = Traffic::start(mesh.clients());
    mesh.wait_all_serving(&traffic, "before the outage").await;

    let (grpc, admin) = (mesh.controller.grpc, mesh.controller.admin);
    mesh.controller.kill().await;
    let killed = Instant::now();
    // The outage lasts until both proxies, on what they last knew, served a
    // good number of requests to every pod.
    let before: Vec<Vec<u64>> = mesh.served_per_upstream();
    let ok_before: Vec<u64> = (0..PROXIES).map(|via| traffic.ok_via(via)).collect();
    within(
        BOUND,
        "traffic to every pod while the controller is down",
        || {
            let now = mesh.served_per_upstream();
            let grew = now
                .iter()
                .zip(&before)
                .all(|(now, before)| now.iter().zip(before).all(|(n, b)| n > b));
            let enough =
                (0..PROXIES).all(|via| traffic.ok_via(via) >= ok_before[via] + OUTAGE_REQUESTS);
            let result = (grew && enough)
                .then_some(())
                .ok_or(format!("served {now:?}, ok {}", traffic.ok_via(0)));
            async move { result }
        },
    )
    .await;
    let outage_failures = traffic.failed();

    mesh.controller = Controller::start_on(mesh.feed.path(), grpc, admin).await;
    let outage = killed.elapsed();
    let restarted = Instant::now();
    let controller = &mesh.controller;
    within(
        BOUND,
        "both proxies watching the restarted controller",
        || async move {
            let watchers = controller.watchers().await?;
            (watchers >= PROXIES as u64)
                .then_some(())
                .ok_or(format!("{watchers} watchers"))
        },
    )
    .await;
    let rewatched_after = restarted.elapsed();

    mesh.add_upstream().await;
    let changed = Instant::now();
    mesh.write_feed(&[]);
    mesh.wait_serving(&traffic, 2, "web-3, added after the restart")
        .await;
    let added_after = changed.elapsed();
    settle(&traffic, "after web-3 was added").await;

    mesh.stop_traffic(traffic, "controller restart", || {
        format!(
            " ({outage_failures} during the {outage:.1?} outage); proxies watching again \
             {rewatched_after:.1?} after the restart; web-3 added after it: traffic through both \
             proxies after {added_after:.1?}"
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_truncating_then_rewriting_the_feed_under_traffic_fails_no_request() {
    let mut mesh = Mesh::start("truncate", 2).await;
    let traffic = Traffic::start(mesh.clients());
    mesh.wait_all_serving(&traffic, "before any edit").await;

    for edit in 1..=EDITS {
        // The editor truncates the file, and the controller reads it empty...
        mesh.feed.truncate();
        let refused = mesh
            .wait_file(&format!("edit {edit}: the emptied file refused"), |file| {
                file["refused"]["reason"] == "empty"
            })
            .await;
        // ...which costs no traffic: every pod keeps getting requests.
        mesh.wait_all_serving(&traffic, &format!("while the file is empty (edit {edit})"))
            .await;
        // Then it writes the file, in place.
        let empty = refused["refused"]["version"].as_u64().unwrap_or(0);
        mesh.write_feed_in_place();
        mesh.wait_file(&format!("edit {edit}: the rewritten file served"), |file| {
            file["refused"].is_null() && file["served"].as_u64() > Some(empty)
        })
        .await;
    }
    settle(&traffic, "after the edits").await;

    let what = format!("editor edits ({EDITS} truncate-then-write edits)");
    mesh.stop_traffic(traffic, &what, String::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_route_written_over_the_split_keeps_traffic_on_the_canary() {
    let mut mesh = Mesh::start("canary", 1).await;
    mesh.add_canary().await;
    mesh.extra = SPLIT.to_string();
    mesh.write_feed(&[]);
    let traffic = Traffic::start(mesh.clients());
    mesh.wait_all_serving(&traffic, "through the split").await;

    mesh.extra = BROKEN_SPLIT.to_string();
    mesh.write_feed(&[]);
    let status = mesh
        .wait_status("the broken split refused", |status| {
            status["refused"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["object"] == "shop/split"))
        })
        .await;
    let refusal = &status["refused"][0];
    assert_eq!(refusal["kind"], "HTTPRoute", "{status:#}");
    let served = refusal["served"]["fileVersion"].as_u64();
    let refused = refusal["refused"]["fileVersion"].as_u64();
    assert!(served < refused, "{status:#}");
    let fields: Vec<&str> = refusal["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].matches[0].path.value",
            "spec.rules[0].backendRefs[1].port"
        ],
        "every bad field named: {status:#}"
    );
    let parent = &status["routes"][0]["parents"][0];
    assert_eq!(parent["accepted"], true, "{status:#}");
    let message = parent["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Fall Back:") && fields.iter().all(|f| message.contains(f)),
        "{message}"
    );

    // The split stays in force: the canary keeps getting its half.
    mesh.wait_all_serving(&traffic, "after the broken version")
        .await;
    settle(&traffic, "after the broken version").await;

    mesh.stop_traffic(traffic, "broken route", || {
        format!(
            "; web-1 served {}, the canary {}",
            mesh.upstreams[0].upstream.served(),
            mesh.upstreams[1].upstream.served(),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_log_to_stderr_in_one_format() {
    let mesh = Mesh::start("logs", 1).await;
    let logs = [
        (
            "plexus_controller",
            &mesh.controller.listening,
            mesh.controller.process.stdout(),
        ),
        (
            "plexus_proxy",
            &mesh.proxies[0].listening,
            mesh.proxies[0].process.stdout(),
        ),
    ];
    for (target, listening, stdout) in logs {
        assert_eq!(stdout, "", "{target} writes nothing to stdout");
        // tracing's default format: `<RFC 3339 time>  INFO <module>: <message> <fields>`.
        let fields: Vec<&str> = listening.split_whitespace().collect();
        assert!(fields.len() > 3, "{listening}");
        assert!(
            fields[0].parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
            "a timestamp first: {listening}"
        );
        assert_eq!(fields[1], "INFO", "{listening}");
        assert!(
            fields[2].starts_with(target) && fields[2].ends_with(':'),
            "the module: {listening}"
        );
    }
}

/// A pod of a Service and whether the file still lists it.
struct Pod {
    upstream: Upstream,
    service: &'static str,
    removed: bool,
}

/// The controller, the two proxies, the pods and the file between them.
struct Mesh {
    feed: Feed,
    controller: Controller,
    proxies: Vec<Proxy>,
    upstreams: Vec<Pod>,
    next_pod: u8,
    /// More documents of the file (a route).
    extra: String,
    _dir: TempDir,
}

impl Mesh {
    async fn start(test: &str, pods: usize) -> Self {
        let dir = TempDir::new(&format!("controller-loopback-{test}"));
        let mut mesh_pods = Vec::new();
        for n in 1..=pods {
            mesh_pods.push(start_pod(n as u8).await);
        }
        let mut feed = Feed::new(&dir);
        let members: Vec<_> = mesh_pods
            .iter()
            .map(|p| feed::ready(&p.upstream, p.service))
            .collect();
        feed.write(&members, "");
        let controller = Controller::start(feed.path()).await;
        let mut proxies = Vec::new();
        for n in 1..=PROXIES {
            proxies.push(Proxy::start(&n.to_string(), controller.grpc, NAMESPACE, &[]).await);
        }
        let mesh = Self {
            feed,
            controller,
            proxies,
            upstreams: mesh_pods,
            next_pod: pods as u8 + 1,
            extra: String::new(),
            _dir: dir,
        };
        // The first request of a target waits for the controller's first
        // answer; make sure it came before the clients count failures.
        for (via, proxy) in mesh.proxies.iter().enumerate() {
            let outbound = proxy.outbound;
            within(
                BOUND,
                &format!("a first answer through proxy {}", via + 1),
                || async move {
                    let reply = http_get(outbound, HOSTS[via], "/", &[("x-via", "9")]).await?;
                    (reply.status == 200 && reply.body.starts_with("web-"))
                        .then_some(())
                        .ok_or(format!("{}: {}", reply.status, reply.body))
                },
            )
            .await;
        }
        mesh
    }

    fn clients(&self) -> Vec<Client> {
        let mut clients = Vec::new();
        for (via, proxy) in self.proxies.iter().enumerate() {
            for _ in 0..CLIENTS_PER_PROXY {
                clients.push(Client {
                    outbound: proxy.outbound,
                    host: HOSTS[via].to_string(),
                    via,
                });
            }
        }
        clients
    }

    async fn add_upstream(&mut self) {
        let pod = start_pod(self.next_pod).await;
        self.next_pod += 1;
        self.upstreams.push(pod);
    }

    /// The canary's one pod, `web-canary-1` on 127.0.0.30.
    async fn add_canary(&mut self) {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 30));
        self.upstreams.push(Pod {
            upstream: Upstream::start(&format!("{CANARY}-1"), ip).await,
            service: CANARY,
            removed: false,
        });
    }

    /// The file with every pod not removed (those at `terminating` as
    /// such), then `extra`.
    fn write_feed(&mut self, terminating: &[usize]) {
        let members = members(&self.upstreams, terminating);
        self.feed.write(&members, &self.extra);
    }

    /// The same file, written in place.
    fn write_feed_in_place(&mut self) {
        let members = members(&self.upstreams, &[]);
        self.feed.write_in_place(&members, &self.extra);
    }

    /// Until the controller's `/status` satisfies `done`; returns it.
    async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let controller = &self.controller;
        let done = &done;
        within(PICKUP_BOUND, what, || async move {
            let status = controller.status().await;
            match done(&status) {
                true => Ok(status),
                false => Err(format!("{status:#}")),
            }
        })
        .await
    }

    /// As [`Mesh::wait_status`], on what it says of the file; returns that.
    async fn wait_file(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let status = self.wait_status(what, |status| done(&status["file"])).await;
        status["file"].clone()
    }

    fn served_per_upstream(&self) -> Vec<Vec<u64>> {
        self.upstreams
            .iter()
            .map(|pod| {
                (0..PROXIES)
                    .map(|via| pod.upstream.served_via(via))
                    .collect()
            })
            .collect()
    }

    /// Until pod `i` gets new requests through every proxy.
    async fn wait_serving(&self, traffic: &Traffic, i: usize, what: &str) {
        let upstream = &self.upstreams[i].upstream;
        let before: Vec<u64> = (0..PROXIES).map(|via| upstream.served_via(via)).collect();
        within(PICKUP_BOUND, what, || {
            let now: Vec<u64> = (0..PROXIES).map(|via| upstream.served_via(via)).collect();
            let result = match now.iter().zip(&before).all(|(n, b)| n > b) {
                true => Ok(()),
                false => Err(format!(
                    "served through each proxy {now:?} (was {before:?}); {} failed so far",
                    traffic.failed()
                )),
            };
            async move { result }
        })
        .await;
    }

    /// [`Mesh::wait_serving`] for every pod the file lists, one after the
    /// other; each named `<pod> <when>`.
    async fn wait_all_serving(&self, traffic: &Traffic, when: &str) {
        for (i, pod) in self.upstreams.iter().enumerate() {
            if !pod.removed {
                let what = format!("{} {when}", pod.upstream.name);
                self.wait_serving(traffic, i, &what).await;
            }
        }
    }

    /// Until pod `i`'s counter stood still while each proxy completed
    /// [`QUIET_REQUESTS`] requests: no proxy sends to it any more. Returns
    /// when (after `changed`) it got its last request.
    async fn wait_drained(&self, traffic: &Traffic, i: usize, changed: Instant) -> Duration {
        let upstream = &self.upstreams[i].upstream;
        let oks = || -> Vec<u64> { (0..PROXIES).map(|via| traffic.ok_via(via)).collect() };
        let mut since = (upstream.served(), oks(), changed);
        within(
            PICKUP_BOUND,
            "no proxy sending to the terminating pod",
            || {
                let (served, ok) = (upstream.served(), oks());
                let result = if served != since.0 {
                    since = (served, ok, Instant::now());
                    Err(format!("it still gets requests ({served} so far)"))
                } else if ok
                    .iter()
                    .zip(&since.1)
                    .all(|(n, b)| *n >= b + QUIET_REQUESTS)
                {
                    Ok(since.2 - changed)
                } else {
                    Err(format!("quiet for {ok:?} requests (from {:?})", since.1))
                };
                async move { result }
            },
        )
        .await
    }

    /// Stops the clients, prints their figures as `what` (then `details`,
    /// taken once they stopped) and asserts that not one request failed.
    async fn stop_traffic(&self, traffic: Traffic, what: &str, details: impl FnOnce() -> String) {
        let summary = traffic.stop().await;
        println!(
            "{what}: {} requests in {:.1?}, {} failed{}",
            summary.ok + summary.failed,
            summary.elapsed,
            summary.failed,
            details(),
        );
        assert_eq!(
            summary.failed,
            0,
            "failed requests: {:?}\n{}",
            summary.errors,
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let mut logs = format!("controller:\n{}\n", self.controller.log());
        for (n, proxy) in self.proxies.iter().enumerate() {
            logs.push_str(&format!("proxy {}:\n{}\n", n + 1, proxy.log()));
        }
        logs
    }
}

/// The pods not removed as the file lists them; those at `terminating` as such.
fn members<'a>(pods: &'a [Pod], terminating: &[usize]) -> Vec<feed::Member<'a>> {
    pods.iter()
        .enumerate()
        .filter(|(_, pod)| !pod.removed)
        .map(|(i, pod)| match terminating.contains(&i) {
            true => feed::terminating(&pod.upstream, pod.service),
            false => feed::ready(&pod.upstream, pod.service),
        })
        .collect()
}

/// Until each proxy completed [`SETTLE_REQUESTS`] more requests.
async fn settle(traffic: &Traffic, what: &str) {
    let before: Vec<u64> = (0..PROXIES).map(|via| traffic.ok_via(via)).collect();
    within(
        BOUND,
        &format!("{SETTLE_REQUESTS} requests per proxy {what}"),
        || {
            let now: Vec<u64> = (0..PROXIES).map(|via| traffic.ok_via(via)).collect();
            let result = match now
                .iter()
                .zip(&before)
                .all(|(n, b)| *n >= b + SETTLE_REQUESTS)
            {
                true => Ok(()),
                false => Err(format!("{now:?} ok (was {before:?})")),
            };
            async move { result }
        },
    )
    .await;
}

/// Pod `web-n` on 127.0.0.(10+n).
async fn start_pod(n: u8) -> Pod {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + n));
    Pod {
        upstream: Upstream::start(&format!("{SERVICE}-{n}"), ip).await,
        service: SERVICE,
        removed: false,
    }
}

/// One GET on a new connection, bounded.
async fn http_get(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        get_over(stream, authority, path, headers).await
    };
    tokio::time::timeout(BOUND, call)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {BOUND:?}"))?
}

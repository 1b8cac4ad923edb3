//! Load balancing (P2C, round robin, consistent hashing) and live endpoint
//! changes with real loopback traffic.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Response, StatusCode};
use http_body_util::Full;
use plexus_api::v1 as proto;
use plexus_proxy::body;
use plexus_tests::http::{admin_get, get, http1_from, text};
use plexus_tests::logical::*;
use plexus_tests::proxy::proxy;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;

fn one_backend(endpoints: Vec<proto::Endpoint>) -> proto::Target {
    target(
        catch_all(proto::HttpRouteRule {
            backends: vec![weighted("b", 1)],
            ..Default::default()
        }),
        vec![("b", backend(endpoints, None))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_avoids_a_slow_endpoint() {
    let fast = http_upstream(|_| async { ok() }).await;
    let slow = http_upstream(|_| async {
        // The slowness under test, not synchronisation.
        tokio::time::sleep(Duration::from_millis(25)).await;
        ok()
    })
    .await;
    let h = Harness::new(one_backend(vec![endpoint(fast.addr), endpoint(slow.addr)]));
    // 8 concurrent clients, 50 requests each.
    let clients = (0..8).map(|_| async {
        for _ in 0..50 {
            assert_eq!(h.get("/").await.status, 200);
        }
    });
    join_all(clients).await;
    let total = fast.requests() + slow.requests();
    assert_eq!(total, 400);
    assert!(
        fast.requests() * 100 >= total * 80,
        "fast {} slow {}",
        fast.requests(),
        slow.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_fails_none_of_its_requests_in_flight() {
    let held = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let blocking = |held: std::sync::Arc<tokio::sync::Semaphore>| {
        move |_| {
            let held = held.clone();
            async move {
                // Released by the test once the endpoint set has changed.
                let _ = held.acquire().await.map(|p| p.forget());
                ok()
            }
        }
    };
    let a = http_upstream(blocking(held.clone())).await;
    let b = http_upstream(blocking(held.clone())).await;
    let c = http_upstream(|_| async { ok() }).await;
    let h = std::sync::Arc::new(Harness::new(one_backend(vec![
        endpoint(a.addr),
        endpoint(b.addr),
    ])));

    const IN_FLIGHT: usize = 20;
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("/").await.status })
        })
        .collect();
    eventually(Duration::from_secs(10), "all requests in flight", || {
        a.in_flight() + b.in_flight() == IN_FLIGHT
    })
    .await;
    let a_before = a.requests();

    // `a` goes away, `b` starts terminating, `c` arrives.
    let mut terminating = endpoint(b.addr);
    terminating.ready = false;
    h.update(one_backend(vec![terminating, endpoint(c.addr)]));
    for _ in 0..50 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert_eq!(c.requests(), 50, "only the new endpoint gets new requests");

    held.add_permits(IN_FLIGHT);
    for request in requests {
        assert_eq!(request.await.expect("request task"), 200);
    }
    assert_eq!(a.requests(), a_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let servers = join_all((0..3).map(|_| http_upstream(|_| async { ok() }))).await;
    let mut t = one_backend(servers.iter().map(|s| endpoint(s.addr)).collect());
    if let Some(b) = t.backends.as_mut().and_then(|t| t.backends.get_mut("b")) {
        b.resilience = Some(proto::Resilience {
            load_balancer: "round-robin".into(),
            ..Default::default()
        });
    }
    let h = Harness::new(t);
    for _ in 0..300 {
        assert_eq!(h.get("/").await.status, 200);
    }
    for s in &servers {
        assert_eq!(s.requests(), 100);
    }
}

/// Upstreams answering with their index (`500` from the ones whose flag is
/// set), so an answer says which endpoint served it.
struct Indexed {
    servers: Vec<Upstream>,
    failing: Vec<Arc<AtomicBool>>,
}

async fn indexed(n: usize) -> Indexed {
    let failing: Vec<Arc<AtomicBool>> = (0..n).map(|_| Arc::default()).collect();
    let servers = join_all(failing.iter().enumerate().map(|(i, failing)| {
        let failing = failing.clone();
        http_upstream(move |_| {
            let failing = failing.load(Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from(i.to_string())));
                if failing {
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                response
            }
        })
    }))
    .await;
    Indexed { servers, failing }
}

/// One backend over the first `n` upstreams, hashing by `hash_key`, each
/// endpoint ejected after one failure for 1 s.
fn hashed(upstreams: &Indexed, n: usize, hash_key: &str) -> proto::Target {
    let mut t = one_backend(
        upstreams.servers[..n]
            .iter()
            .map(|s| endpoint(s.addr))
            .collect(),
    );
    if let Some(b) = t.backends.as_mut().and_then(|t| t.backends.get_mut("b")) {
        b.resilience = Some(proto::Resilience {
            load_balancer: "consistent-hash".into(),
            hash_key: hash_key.into(),
            failure_accrual: Some(proto::FailureAccrual {
                consecutive_failures: Some(1),
                min_backoff_ms: Some(1_000),
                max_backoff_ms: Some(1_000),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    t
}

/// The status and the serving upstream's index of one request with `x-user: key`.
async fn served(h: &Harness, key: &str) -> (StatusCode, String) {
    let mut request = request("GET", "/", body::empty());
    request
        .headers_mut()
        .insert("x-user", key.parse().expect("a header value"));
    let answer = h.send(request).await;
    (answer.status, String::from_utf8_lossy(&answer.body).into())
}

/// The upstream each of `keys` reaches (all answered 200).
async fn owners(h: &Harness, keys: &[String]) -> Vec<String> {
    let mut owners = Vec::with_capacity(keys.len());
    for key in keys {
        let (status, owner) = served(h, key).await;
        assert_eq!(status, 200, "{key}: {owner}");
        owners.push(owner);
    }
    owners
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("user-{k}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_reaches_the_same_endpoint_and_a_request_without_one_is_balanced() {
    let upstreams = indexed(4).await;
    let h = Harness::new(hashed(&upstreams, 4, "header:X-User"));
    let (_, first) = served(&h, "alice").await;
    for _ in 1..1_000 {
        assert_eq!(served(&h, "alice").await, (StatusCode::OK, first.clone()));
    }
    let counts: Vec<usize> = upstreams.servers.iter().map(Upstream::requests).collect();
    assert_eq!(
        counts.iter().filter(|c| **c == 1_000).count(),
        1,
        "{counts:?}"
    );
    assert_eq!(counts.iter().sum::<usize>(), 1_000, "{counts:?}");

    for _ in 0..100 {
        assert_eq!(h.get("/").await.status, 200);
    }
    let keyless: Vec<usize> = upstreams
        .servers
        .iter()
        .zip(&counts)
        .map(|(s, before)| s.requests() - before)
        .collect();
    let reached = keyless.iter().filter(|n| **n > 0).count();
    assert!(reached >= 2, "keyless requests are spread: {keyless:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fifth_endpoint_moves_about_a_fifth_of_the_keys() {
    let upstreams = indexed(5).await;
    let h = Harness::new(hashed(&upstreams, 4, "header:x-user"));
    let keys = keys(200);
    let before = owners(&h, &keys).await;
    let used: HashSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 4, "every endpoint owns keys");

    h.update(hashed(&upstreams, 5, "header:x-user"));
    let after = owners(&h, &keys).await;
    let moved: Vec<(&String, &String)> = before
        .iter()
        .zip(&after)
        .filter(|(was, is)| was != is)
        .collect();
    // Ideally 40 of 200 (20 %); Maglev moves a little more.
    assert!(
        (20..=70).contains(&moved.len()),
        "{} of 200 keys moved",
        moved.len()
    );
    let to_new = moved.iter().filter(|(_, is)| *is == "4").count();
    assert!(
        to_new * 10 >= moved.len() * 8,
        "{to_new} of {} to the new endpoint",
        moved.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoints_keys_go_to_the_others_and_come_back() {
    let upstreams = indexed(4).await;
    let h = Harness::new(hashed(&upstreams, 4, "header:x-user"));
    let keys = keys(200);
    let before = owners(&h, &keys).await;
    let of_0: Vec<String> = keys
        .iter()
        .zip(&before)
        .filter(|(_, owner)| *owner == "0")
        .map(|(key, _)| key.clone())
        .collect();
    assert!(of_0.len() >= 20, "{} keys on endpoint 0", of_0.len());

    // Endpoint 0 fails once and is ejected; its keys go to all the others.
    upstreams.failing[0].store(true, Ordering::SeqCst);
    assert_eq!(served(&h, &of_0[0]).await.0, 500);
    let mut elsewhere = HashSet::new();
    for key in &of_0 {
        match served(&h, key).await {
            (StatusCode::OK, owner) => {
                assert_ne!(owner, "0");
                elsewhere.insert(owner);
            }
            // A probe after the backoff, on a slow machine: ejected again.
            (status, owner) => assert_eq!((status.as_u16(), owner.as_str()), (500, "0")),
        }
    }
    assert!(
        elsewhere.len() >= 2,
        "spread, not one neighbour: {elsewhere:?}"
    );
    let others: Vec<String> = keys
        .iter()
        .zip(&before)
        .filter(|(_, owner)| *owner != "0")
        .map(|(key, _)| key.clone())
        .collect();
    let stayed = owners(&h, &others).await;
    assert!(
        stayed
            .iter()
            .zip(before.iter().filter(|o| *o != "0"))
            .all(|(a, b)| a == b)
    );

    // Healthy again: a probe after the backoff readmits it, and its keys return.
    upstreams.failing[0].store(false, Ordering::SeqCst);
    within(BOUND, "endpoint 0's keys back on it", || async {
        let now = owners(&h, &of_0).await;
        match now.iter().filter(|o| *o != "0").count() {
            0 => Ok(()),
            away => Err(format!("{away} keys elsewhere")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_hashes_the_applications_source_address() {
    let upstreams = indexed(4).await;
    let endpoints: Vec<String> = upstreams
        .servers
        .iter()
        .map(|s| format!("{{ address: \"{}\", ready: true }}", s.addr))
        .collect();
    let yaml = format!(
        "destinations:\n  - aliases: [\"web:80\"]\n    target:\n      routes: {{ default_backend: default }}\n      \
         backends:\n        backends:\n          default: {{ resilience: {{ load_balancer: consistent-hash, \
         hash_key: source-ip }}, endpoints: [{}] }}\n",
        endpoints.join(", ")
    );
    let proxy = proxy().static_config(yaml).start().await;
    let (status, config) = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    let resilience = &config["destinations"][0]["backends"]["backends"]["default"]["resilience"];
    assert_eq!(
        (&resilience["load_balancer"], &resilience["hash_key"]),
        (&"consistent-hash".into(), &"source-ip".into()),
        "{config}"
    );

    let mut reached = HashSet::new();
    for source in 2..=21u8 {
        let source = IpAddr::from([127, 0, 0, source]);
        let mut owner = None;
        // New connections each time: the key is the address, not the connection.
        for _ in 0..5 {
            let mut client = http1_from(proxy.outbound_addr, source).await;
            let response = client
                .send_request(get("/", "web"))
                .await
                .expect("response");
            assert_eq!(response.status(), 200);
            let served = text(response).await;
            assert_eq!(
                *owner.get_or_insert_with(|| served.clone()),
                served,
                "{source}"
            );
        }
        reached.extend(owner);
    }
    assert!(reached.len() >= 3, "20 sources spread: {reached:?}");
}

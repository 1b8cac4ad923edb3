//! The inbound rate limit from a Pod's annotations, through the controller's
//! `WatchServer`, applied by the server proxy to real mTLS clients. The
//! burst tests' limits are per hour, so no token comes back while they run;
//! the last test measures the rate itself.
//!
//! Each test's pod is also STRICT: a plaintext request refused with 403
//! shows the pod's policy (and its limit: one object, one update) has
//! arrived, and refused requests take no token.

use http::Response;
use hyper::body::Incoming;
use plexus_proxy::RunningProxy;
use plexus_tests::controller::{MeshedPair, id};
use plexus_tests::http::{get, http1, text};
use plexus_tests::upstream::Upstream;
use plexus_tests::wait::bounded;
use std::time::Duration;

use crate::mtls::{app, call, header, metric, objects_annotated, plaintext_get, wait_ready};

/// Waits until `server` applies the pod's policy (STRICT refuses plaintext).
async fn policy_applied(server: &RunningProxy) {
    bounded("the server proxy applies the controller's policy", async {
        while plaintext_get(server).await.status() != 403 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The meshed pair with `limited` (annotations on `web-1`), once both
/// sidecars are ready and the server applies the pod's policy; the app is
/// returned to keep it serving.
async fn limited_pair(limited: &'static str) -> (Upstream, MeshedPair) {
    let app = app().await;
    let pair = MeshedPair::start(app.addr, |port| {
        objects_annotated("permissive", "", limited, port)
    })
    .await;
    wait_ready(&pair.server).await;
    wait_ready(&pair.client).await;
    policy_applied(&pair.server).await;
    (app, pair)
}

/// The first response of `client` that reached the server proxy: until the
/// controller has told the client about `web:80`, its calls fail before that.
async fn first_call(client: &RunningProxy) -> Response<Incoming> {
    bounded("a request through the controller's view", async {
        loop {
            let response = call(client, None).await;
            if !response.status().is_server_error() {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Whether `response` is the rate limit's refusal, with a sane `Retry-After`.
fn rate_limited(response: &Response<Incoming>) -> bool {
    let retry_after: u64 = header(response, "retry-after").parse().unwrap_or(0);
    response.status() == 429
        && header(response, "plexus-error") == "rate-limited"
        && (1..=3600).contains(&retry_after)
}

async fn statuses(client: &RunningProxy, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let response = bounded("a request", call(client, None)).await;
        if response.status() == 429 {
            assert!(rate_limited(&response), "{:?}", response.headers());
        }
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_burst_get_429_with_retry_after_until_the_limit_goes() {
    let limited = r#"plexus.io/mtls-mode: strict, plexus.io/rate-limit: 1/h, plexus.io/rate-limit-burst: "3","#;
    let (_app, pair) = limited_pair(limited).await;

    let first = first_call(&pair.client).await;
    assert_eq!(first.status(), 200, "{:?}", first.headers());
    let rest = statuses(&pair.client, 4).await;
    assert_eq!(rest, [200, 200, 429, 429], "a burst of 3, then refused");
    let counted = metric(&pair.server, "plexus_proxy_inbound_rate_limited_total ").await;
    assert_eq!(counted, 2.0);

    // The limit removed: the next requests pass.
    let port = pair.server.inbound_addr.port();
    std::fs::write(&pair.file, objects_annotated("permissive", "", "", port)).expect("feed file");
    bounded("the limit is lifted", async {
        while call(&pair.client, None).await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(statuses(&pair.client, 5).await, [200; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_one_client_exhausting_its_bucket_does_not_limit_another() {
    let limited = r#"plexus.io/mtls-mode: strict, plexus.io/rate-limit: 1/h, plexus.io/rate-limit-burst: "2", plexus.io/rate-limit-per-identity: enabled,"#;
    let (_app, pair) = limited_pair(limited).await;
    let admin = pair.sidecar("admin", "admin-1").start().await;
    wait_ready(&admin).await;

    assert_eq!(first_call(&pair.client).await.status(), 200);
    assert_eq!(statuses(&pair.client, 3).await, [200, 429, 429]);

    let first = first_call(&admin).await;
    assert_eq!(first.status(), 200, "{:?}", first.headers());
    assert_eq!(header(&first, "x-client-id"), id("shop", "admin").as_str());
    assert_eq!(statuses(&admin, 2).await, [200, 429]);
    assert_eq!(
        statuses(&pair.client, 1).await,
        [429],
        "still its own bucket"
    );
    let counted = metric(&pair.server, "plexus_proxy_inbound_rate_limited_total ").await;
    assert_eq!(counted, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_requests_are_admitted_at_the_configured_rate_within_ten_percent() {
    const RATE: f64 = 100.0;
    const BURST: f64 = 20.0;
    let limited = r#"plexus.io/mtls-mode: strict, plexus.io/rate-limit: 100/s, plexus.io/rate-limit-burst: "20","#;
    let (_app, pair) = limited_pair(limited).await;
    first_call(&pair.client).await;

    // Four clients calling as fast as they can, far above the rate, for 2 s;
    // the burst absorbs scheduling stalls of up to 200 ms on a busy machine.
    let started = tokio::time::Instant::now();
    let window = Duration::from_secs(2);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let client = pair.client.outbound_addr;
            tokio::spawn(async move {
                let (mut admitted, mut limited) = (0u32, 0u32);
                let mut send = http1(client).await;
                while started.elapsed() < window {
                    let response = send.send_request(get("/", "web:80")).await;
                    match response.as_ref().map(|r| r.status().as_u16()) {
                        Ok(200) => admitted += 1,
                        Ok(429) => limited += 1,
                        other => panic!("unexpected answer {other:?}"),
                    }
                    // Read to the end, so the connection carries the next request.
                    text(response.expect("response")).await;
                }
                (admitted, limited)
            })
        })
        .collect();
    let (mut admitted, mut limited) = (0u32, 0u32);
    for caller in callers {
        let (a, l) = bounded("a caller", caller).await.expect("caller");
        admitted += a;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst left after `first_call`, plus the rate over the window.
    let expected = BURST - 1.0 + RATE * elapsed;
    eprintln!("{admitted} admitted, {limited} limited in {elapsed:.3} s; expected {expected:.0}");
    assert!(limited > admitted, "the clients called above the rate");
    let admitted = f64::from(admitted);
    assert!(
        (admitted - expected).abs() <= expected * 0.1,
        "{admitted} admitted, expected {expected:.0} within 10 %"
    );
}

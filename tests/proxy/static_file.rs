//! The static destinations file and the environment as the real binary meets
//! them: a bad file stops it naming every bad field, a misspelled variable is
//! warned about with the name it was meant to be, and the file is followed
//! live (a good new version moves requests, a bad one keeps the last good).
//!
//! The binary's log is read from stdout and stderr alike (`bins::Process`).

use std::net::SocketAddr;

use plexus_tests::bins::{Process, addr_field};
use plexus_tests::http::{get, http1};
use plexus_tests::proxy::proxy_binary;
use plexus_tests::temp::TempDir;
use plexus_tests::upstream::echo_upstream;
use plexus_tests::wait::{BOUND, bounded, within};

/// `web:80`, whose one HTTPRoute rule matches the path with `path_type` and
/// sends to the one endpoint `endpoint`; `extra` is one more line in `routes`.
fn config(endpoint: SocketAddr, path_type: &str, extra: &str) -> String {
    format!(
        r#"destinations:
  - aliases: ["web:80"]
    target:
      name: web.shop.svc.cluster.local:80
      routes:
        default_backend: web
        http:
          - name: shop/web
            rules:
              - matches: [{{ path: {{ type: {path_type}, value: / }} }}]
                backends: [{{ backend: web }}]
        {extra}
      backends:
        backends:
          web: {{ endpoints: [{{ address: "{endpoint}", ready: true }}] }}
"#
    )
}

/// The upstream that answered a GET for `web` sent to `outbound`.
async fn served_by(outbound: SocketAddr) -> Result<String, String> {
    let mut client = http1(outbound).await;
    let response = client
        .send_request(get("/", "web"))
        .await
        .map_err(|e| format!("GET: {e}"))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let upstream = response.headers().get("x-upstream");
    Ok(upstream
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

/// Waits until `outbound`'s requests for `web` reach `upstream`.
async fn until_served_by(outbound: SocketAddr, upstream: SocketAddr, what: &str) {
    within(BOUND, what, || async move {
        match served_by(outbound).await? {
            by if by == upstream.to_string() => Ok(()),
            by => Err(format!("served by {by}")),
        }
    })
    .await;
}

/// Waits until the process's log holds every one of `lines`; returns the log.
async fn until_logged(process: &Process, what: &str, lines: &[&str]) -> String {
    within(BOUND, what, || {
        let log = process.log();
        async move {
            match lines.iter().find(|line| !log.contains(**line)) {
                None => Ok(log),
                Some(missing) => Err(format!("no {missing:?} in:\n{log}")),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_bad_file_stops_the_binary_naming_every_field_and_a_good_one_starts() {
    let app = echo_upstream().await;
    let dir = TempDir::new("static-file-bad");
    let path = dir.join("static.yaml");
    std::fs::write(&path, config(app.addr, "Prefix", "retriez: 3")).expect("write");

    let (mut process, line) =
        Process::spawn(proxy_binary(&path), "plexus-proxy", "PLEXUS_STATIC_CONFIG").await;
    let status = bounded("the proxy exits", process.child.wait())
        .await
        .expect("wait for the proxy");
    assert!(!status.success(), "{status:?}\n{}", process.log());
    assert!(line.contains(&path.display().to_string()), "{line}");
    until_logged(
        &process,
        "both problems named",
        &[
            "destinations[0].target.routes.retriez: unknown field",
            "destinations[0].target.routes.http[0].rules[0].matches[0].path.type: \
             unknown path match type \"Prefix\"",
        ],
    )
    .await;

    // Fixed, the same file starts the proxy, which routes by it.
    std::fs::write(&path, config(app.addr, "PathPrefix", "")).expect("write");
    let (_process, line) =
        Process::spawn(proxy_binary(&path), "plexus-proxy", "proxy listening").await;
    let outbound = addr_field(&line, "outbound_addr");
    until_served_by(outbound, app.addr, "the app serves `web`").await;
}

#[tokio::test]
async fn a_misspelled_variable_is_warned_about_with_the_nearest_name() {
    let app = echo_upstream().await;
    let dir = TempDir::new("static-file-typo");
    let path = dir.join("static.yaml");
    std::fs::write(&path, config(app.addr, "PathPrefix", "")).expect("write");
    let mut command = proxy_binary(&path);
    command
        .env("PLEXUS_OTLP_ENDPIONT", "http://127.0.0.1:4317")
        .env("PLEXUS_FEATURE_FLAGS", "on");

    let (process, line) = Process::spawn(command, "plexus-proxy", "PLEXUS_OTLP_ENDPIONT").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(
            "PLEXUS_OTLP_ENDPIONT is not a variable the proxy reads (ignored); \
             did you mean PLEXUS_OTLP_ENDPOINT?"
        ),
        "{line}"
    );
    // A name near no known one is warned about too, without a guess; the
    // proxy starts all the same.
    let log = until_logged(
        &process,
        "the other warning and the start",
        &[
            "PLEXUS_FEATURE_FLAGS is not a variable the proxy reads (ignored)",
            "proxy listening",
        ],
    )
    .await;
    assert!(!log.contains("PLEXUS_FEATURE_FLAGS is not a variable the proxy reads (ignored);"));
}

#[tokio::test]
async fn the_file_is_followed_live_and_a_bad_version_keeps_the_last_good() {
    let (a, b, c) = (
        echo_upstream().await,
        echo_upstream().await,
        echo_upstream().await,
    );
    let dir = TempDir::new("static-file-live");
    let path = dir.join("static.yaml");
    std::fs::write(&path, config(a.addr, "PathPrefix", "")).expect("write");
    let (process, line) =
        Process::spawn(proxy_binary(&path), "plexus-proxy", "proxy listening").await;
    let outbound = addr_field(&line, "outbound_addr");
    until_served_by(outbound, a.addr, "A serves at start").await;

    // Rewritten in place: requests move to the new endpoint.
    std::fs::write(&path, config(b.addr, "PathPrefix", "")).expect("write");
    until_served_by(outbound, b.addr, "requests move to B").await;

    // An editor's truncation, then a version with a bad rule: both refused,
    // each named in the log, and B keeps serving.
    std::fs::write(&path, "").expect("truncate");
    until_logged(&process, "the empty file refused", &["the file is empty"]).await;
    std::fs::write(&path, config(c.addr, "Prefix", "")).expect("write");
    until_logged(
        &process,
        "the bad version refused",
        &[
            "new version refused",
            "destinations[0].target.routes.http[0].rules[0].matches[0].path.type: \
             unknown path match type \"Prefix\"",
        ],
    )
    .await;
    for n in 0..5 {
        assert_eq!(
            served_by(outbound).await,
            Ok(b.addr.to_string()),
            "request {n} after the refusal"
        );
    }

    // A good version put in place by a rename (editors, ConfigMap updates).
    let next = dir.join("static.yaml.next");
    std::fs::write(&next, config(c.addr, "PathPrefix", "")).expect("write");
    std::fs::rename(&next, &path).expect("rename");
    until_served_by(outbound, c.addr, "requests move to C").await;
    until_logged(&process, "the new version logged", &["new version applied"]).await;
}

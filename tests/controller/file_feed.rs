//! The controller binary's file feed, with the file rewritten live: a file
//! that is not YAML or is empty is refused whole (the objects stay, `/status`
//! says why, with the line), in bounded memory and CPU, still ending on
//! SIGTERM; the next good file loads; an object absent from a well-formed file is deleted, and an object
//! that does not read keeps its served version.

use std::time::Duration;

use plexus_tests::bins::{ControllerProcess, controller_status, start_controller};
use plexus_tests::http::raw_get;
use plexus_tests::temp::TempDir;
use plexus_tests::wait::within;
use serde_json::Value;

/// Generous: the feed polls every 250 ms and reads a change after one more poll.
const BOUND: Duration = Duration::from_secs(30);

fn service(name: &str, ip: &str, port: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: {port}}}]}}
"
    )
}

async fn start(dir: &TempDir, objects: &str) -> ControllerProcess {
    let controller = start_controller(dir, objects, &["--grpc-plaintext"], &[]).await;
    let admin = controller.admin.clone();
    within(BOUND, "the controller's first load", || {
        let admin = admin.clone();
        async move {
            let status = controller_status(&admin).await;
            (status["file"]["served"] == 1)
                .then_some(())
                .ok_or(format!("{status}"))
        }
    })
    .await;
    controller
}

/// `plexus_controller_index_objects{kind="services"}`.
async fn services(admin: &str) -> u64 {
    let metrics = raw_get(admin, "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("plexus_controller_index_objects{kind=\"services\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no services count in {metrics}"))
}

/// Until `/status` satisfies `done`; returns it.
async fn status_until(admin: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    within(BOUND, what, || {
        let admin = admin.to_string();
        let done = &done;
        async move {
            let status = controller_status(&admin).await;
            done(&status)
                .then_some(status.clone())
                .ok_or(format!("{status:#}"))
        }
    })
    .await
}

#[tokio::test]
async fn a_file_that_is_not_yaml_is_refused_by_line_in_bounded_memory_and_cpu_then_the_next_loads()
{
    let dir = TempDir::new("feed-garbage");
    let controller = start(&dir, &service("web", "10.96.0.10", "80")).await;
    let admin = controller.admin.clone();
    let feed = dir.join("objects.yaml");

    let before = controller.process.usage();
    // What made the controller run away (issue 14): a syntax error in place of the file.
    std::fs::write(&feed, "this: is: not: yaml: [\n").unwrap();
    let status = status_until(&admin, "the refusal on /status", |s| {
        s["file"]["refused"]["reason"] == "syntax"
    })
    .await;
    let refused = &status["file"]["refused"];
    assert_eq!(status["file"]["path"], feed.display().to_string());
    assert_eq!(
        (&refused["line"], &refused["column"]),
        (&Value::from(1), &Value::from(9))
    );
    assert_eq!(status["file"]["served"], 1, "{status:#}");
    // The garbage stays for many polls: the controller keeps answering, keeps
    // its objects, and neither grows nor spins.
    let exposed = tokio::time::Instant::now();
    while exposed.elapsed() < Duration::from_secs(3) {
        assert!(raw_get(&admin, "/ready").await.starts_with("HTTP/1.1 200"));
        assert_eq!(services(&admin).await, 1, "the last objects stay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = controller.process.usage();
    assert!(after.peak_rss_kib < 200 * 1024, "{before:?} -> {after:?}");
    assert!(
        after.cpu - before.cpu < Duration::from_secs(2),
        "{before:?} -> {after:?}"
    );
    let log = controller.process.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("file refused")).collect();
    assert_eq!(
        refusals.len(),
        1,
        "logged once per version of the file:\n{log}"
    );
    assert!(
        refusals[0].contains(&feed.display().to_string()) && refusals[0].contains("line 1"),
        "{}",
        refusals[0]
    );

    // The next valid file is loaded.
    let next = service("web", "10.96.0.10", "80") + &service("api", "10.96.0.11", "8080");
    std::fs::write(&feed, next).unwrap();
    let status = status_until(&admin, "the next file served", |s| {
        s["file"]["served"] == 3 && s["file"]["refused"].is_null()
    })
    .await;
    assert_eq!(services(&admin).await, 2, "{status:#}");

    // And with garbage in place again, SIGTERM still ends it, cleanly.
    std::fs::write(&feed, "this: is: not: yaml: [\n").unwrap();
    status_until(&admin, "the second refusal", |s| {
        s["file"]["refused"]["version"] == 4
    })
    .await;
    let mut controller = controller;
    let pid = controller.process.child.id().expect("running") as i32;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = tokio::time::timeout(BOUND, controller.process.child.wait()).await;
    let status = exited.expect("SIGTERM ends the controller").unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn an_emptied_file_is_refused_until_written_again_and_an_empty_list_deletes_all() {
    let dir = TempDir::new("feed-empty");
    let objects = service("web", "10.96.0.10", "80");
    let controller = start(&dir, &objects).await;
    let admin = controller.admin.clone();
    let feed = dir.join("objects.yaml");

    // An editor writing in place: truncated, then written.
    std::fs::File::create(&feed).unwrap();
    let status = status_until(&admin, "the empty file refused", |s| {
        s["file"]["refused"]["reason"] == "empty"
    })
    .await;
    let message = status["file"]["refused"]["message"].as_str().unwrap();
    assert!(
        message.contains("kind: List"),
        "says how to delete everything: {message}"
    );
    assert_eq!(services(&admin).await, 1, "the objects stay");
    std::fs::write(&feed, &objects).unwrap();
    status_until(&admin, "the rewritten file served", |s| {
        s["file"]["served"] == 3 && s["file"]["refused"].is_null()
    })
    .await;
    assert_eq!(services(&admin).await, 1);

    // Deleting everything takes a file that says so.
    std::fs::write(&feed, "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
    status_until(&admin, "the empty list served", |s| {
        s["file"]["served"] == 4
    })
    .await;
    assert_eq!(services(&admin).await, 0);
}

#[tokio::test]
async fn an_object_left_out_is_deleted_and_one_that_does_not_read_keeps_its_version() {
    let dir = TempDir::new("feed-objects");
    let objects = service("web", "10.96.0.10", "80") + &service("api", "10.96.0.11", "8080");
    let controller = start(&dir, &objects).await;
    let admin = controller.admin.clone();
    assert_eq!(services(&admin).await, 2);

    // `api` left out; `web` with two fields of the wrong type.
    let bad_web = "---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: eighty}, {name: h2, port: 81, appProtocol: [h2c]}]}
";
    std::fs::write(dir.join("objects.yaml"), bad_web).unwrap();
    let status = status_until(&admin, "version 2 served", |s| s["file"]["served"] == 2).await;
    assert_eq!(
        services(&admin).await,
        1,
        "api deleted, web kept: {status:#}"
    );
    let refused = status["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{status:#}");
    let web = &refused[0];
    assert_eq!(
        (&web["kind"], &web["object"]),
        (&Value::from("Service"), &Value::from("shop/web"))
    );
    assert_eq!(web["served"]["fileVersion"], 1);
    assert_eq!(web["refused"]["fileVersion"], 2);
    let fields: Vec<&str> = web["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert_eq!(fields, ["spec.ports[0].port", "spec.ports[1].appProtocol"]);
    // The log names every bad field in one line.
    within(BOUND, "the refusal logged", || {
        let log = controller.process.log();
        let found = log.lines().any(|l| {
            l.contains("object version refused")
                && l.contains("spec.ports[0].port")
                && l.contains("spec.ports[1].appProtocol")
        });
        async move { found.then_some(()).ok_or(log) }
    })
    .await;
}

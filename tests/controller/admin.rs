//! The admin endpoint: readiness follows the feed, metrics count watchers
//! and index objects, status lists refused routes.

use std::sync::Arc;

use plexus_controller::admin::Admin;
use plexus_controller::leader::Leadership;
use plexus_controller::metrics::Metrics;
use plexus_discovery::feed::{self, Readiness};
use plexus_discovery::index::{IndexConfig, SharedIndex};
use plexus_tests::http::raw_get;

#[tokio::test]
async fn live_ready_metrics_status() {
    let index = SharedIndex::new(IndexConfig::default());
    let ready = Readiness::default();
    let admin = Admin {
        index: index.clone(),
        metrics: Arc::new(Metrics::new()),
        ready: ready.clone(),
        leadership: Leadership::sole(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener));

    assert!(raw_get(addr, "/live").await.starts_with("HTTP/1.1 200"));
    assert!(raw_get(addr, "/ready").await.starts_with("HTTP/1.1 503"));
    ready.set_ready();
    assert!(raw_get(addr, "/ready").await.starts_with("HTTP/1.1 200"));

    let objects = feed::file::parse(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop}]
"#,
    )
    .unwrap();
    objects.apply(&mut index.lock(), 1);
    let _watch = index.lock().watch_target("web.shop:80", "").unwrap();

    let metrics = raw_get(addr, "/metrics").await;
    assert!(
        metrics.contains(r#"plexus_controller_index_objects{kind="services"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"plexus_controller_index_objects{kind="target_watches"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("plexus_controller_push_latency_seconds"),
        "{metrics}"
    );

    let status = raw_get(addr, "/status").await;
    assert!(status.contains("\"accepted\": false"), "{status}");
    assert!(status.contains("NotAllowedByParent"), "{status}");
}

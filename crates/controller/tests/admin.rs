//! The admin endpoint: readiness follows the feed, metrics count watchers
//! and index objects, status lists refused routes.

use std::sync::Arc;
use std::time::Duration;

use plexus_controller::admin::Admin;
use plexus_controller::feed::Readiness;
use plexus_controller::index::{IndexConfig, SharedIndex};
use plexus_controller::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("admin answers")
}

#[tokio::test]
async fn live_ready_metrics_status() {
    let index = SharedIndex::new(IndexConfig::default());
    let ready = Readiness::default();
    let admin = Admin {
        index: index.clone(),
        metrics: Arc::new(Metrics::new()),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener));

    assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 503"));
    ready.set_ready();
    assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));

    let (objects, problems) = plexus_controller::feed::file::parse(
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
    );
    objects.reset(&mut index.lock(), problems);
    let _watch = index.lock().watch_target("web.shop:80", "").unwrap();

    let metrics = get(addr, "/metrics").await;
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

    let status = get(addr, "/status").await;
    assert!(status.contains("\"accepted\": false"), "{status}");
    assert!(status.contains("NotAllowedByParent"), "{status}");
}

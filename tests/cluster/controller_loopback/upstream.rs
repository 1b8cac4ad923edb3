//! The service's pods: tiny HTTP servers that count what they serve, per
//! proxy (the client names the proxy it goes through in `x-via`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{BOUND, PROXIES};

pub struct Upstream {
    /// The pod's name, also the body of every answer.
    pub name: String,
    pub addr: SocketAddr,
    served: Arc<[AtomicU64; PROXIES]>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    /// Serves on `ip`:0 (each pod has its own loopback address).
    pub async fn start(name: &str, ip: IpAddr) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| panic!("bind {name} on {ip}: {e}"));
        let addr = listener.local_addr().expect("bound address");
        let served: Arc<[AtomicU64; PROXIES]> = Arc::new(Default::default());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, name.to_owned(), served.clone(), stopped));
        Self {
            name: name.to_owned(),
            addr,
            served,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Requests served that came through proxy `via`.
    pub fn served_via(&self, via: usize) -> u64 {
        self.served[via].load(Ordering::SeqCst)
    }

    pub fn served(&self) -> u64 {
        (0..PROXIES).map(|via| self.served_via(via)).sum()
    }

    /// Stops accepting, lets open connections finish their requests, closes them.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let stopped = tokio::time::timeout(BOUND, task).await;
            assert!(
                matches!(stopped, Ok(Ok(()))),
                "{} stops gracefully",
                self.name
            );
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    served: Arc<[AtomicU64; PROXIES]>,
    mut stopped: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        let (name, served) = (name.clone(), served.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let via = request
                .headers()
                .get("x-via")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|via| *via < PROXIES);
            if let Some(via) = via {
                served[via].fetch_add(1, Ordering::SeqCst);
            }
            let body = Full::new(Bytes::from(name.clone()));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    // Bounded by the caller's timeout on the task.
    graceful.shutdown().await;
}

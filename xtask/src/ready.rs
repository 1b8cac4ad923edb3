//! Small HTTP GETs to the processes a task started: readiness (`/ready`, polled with a
//! bound), `/stats`, `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::process::Processes;

/// One GET gives up after this.
const GET_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Probe {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Probe {
    pub fn new() -> Probe {
        Probe {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .context("building a probe request")?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(GET_TIMEOUT, exchange)
            .await
            .with_context(|| format!("GET http://{addr}{path}: no answer in {GET_TIMEOUT:?}"))?
            .with_context(|| format!("GET http://{addr}{path}"))
    }

    /// Polls `path` until it answers 2xx, failing early when a child process exits and
    /// after `within` in any case.
    pub async fn wait_ready(
        &self,
        what: &str,
        addr: SocketAddr,
        path: &str,
        within: Duration,
        processes: &mut Processes,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            processes.check_alive()?;
            let last = match self.get(addr, path).await {
                Ok((status, _)) if status.is_success() => return Ok(()),
                Ok((status, body)) => {
                    format!("{status} {}", String::from_utf8_lossy(&body).trim())
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{what} was not ready within {within:?} (GET http://{addr}{path}: {last})"
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    /// A component that is up but never ready.
    async fn never_ready() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|_| async {
                    let mut response = Response::new(Full::new(Bytes::from("not ready\n")));
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned(),
                );
            }
        });
        addr
    }

    fn processes(name: &str) -> (Processes, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("xtask-probe-{name}-{}", std::process::id()));
        (Processes::new(&dir).expect("log dir"), dir)
    }

    #[tokio::test]
    async fn a_component_that_never_gets_ready_fails_with_its_last_answer() {
        let addr = never_ready().await;
        let (mut processes, dir) = processes("never");
        let error = Probe::new()
            .wait_ready(
                "the sidecar of x",
                addr,
                "/ready",
                Duration::from_millis(300),
                &mut processes,
            )
            .await
            .expect_err("never ready");
        let message = format!("{error:#}");
        assert!(
            message.contains("the sidecar of x was not ready within"),
            "{message}"
        );
        assert!(
            message.contains("503 Service Unavailable not ready"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_component_that_exited_fails_the_wait_at_once_naming_it() {
        let addr = never_ready().await;
        let (mut processes, dir) = processes("exited");
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "echo 'PLEXUS_ADMIN_ADDR is invalid' >&2; exit 2"]);
        processes
            .spawn("frontend-0-proxy", command)
            .expect("spawns");
        // The bound is long: only the exit can end the wait in time.
        let error = tokio::time::timeout(
            Duration::from_secs(20),
            Probe::new().wait_ready(
                "the sidecar",
                addr,
                "/ready",
                Duration::from_secs(60),
                &mut processes,
            ),
        )
        .await
        .expect("ends well before its bound")
        .expect_err("the process exited");
        let message = format!("{error:#}");
        assert!(message.contains("frontend-0-proxy exited"), "{message}");
        assert!(
            message.contains("PLEXUS_ADMIN_ADDR is invalid"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

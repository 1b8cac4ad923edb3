//! Small HTTP GETs to the demo's components: readiness, `/stats`, `/metrics`.

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

use super::processes::Processes;

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

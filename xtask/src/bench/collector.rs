//! Where the proxies of a bench run send their spans: nowhere (tracing off),
//! a given OTLP endpoint, or a broken collector the bench makes itself, to
//! show that a dead or stalled collector costs requests nothing.

use std::fmt;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::proxy::free_loopback_port;

/// Accepted connections the stalled collector keeps open at most; past it,
/// new ones are closed (a proxy reconnecting in a loop must not exhaust fds).
const STALLED_MAX_CONNECTIONS: usize = 256;

/// A collector the bench stands in for (`--otlp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokenCollector {
    /// A loopback port where nothing listens: every export is refused.
    Dead,
    /// A listener that accepts connections and never answers: every export
    /// waits for the exporter's own timeout.
    Stalled,
}

/// What the report says about tracing during the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum OtlpSetting {
    /// `PLEXUS_OTLP_ENDPOINT` unset: the proxies trace nothing.
    Off,
    /// Spans of every request (sampling 1.0) exported to a collector given by the user.
    Endpoint { endpoint: String },
    /// Spans of every request exported to a collector that is dead or stalled.
    Broken {
        collector: BrokenCollector,
        endpoint: String,
    },
}

impl fmt::Display for OtlpSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtlpSetting::Off => f.write_str("off"),
            OtlpSetting::Endpoint { endpoint } => {
                write!(
                    f,
                    "every request traced (sampling 1.0), exported to {endpoint}"
                )
            }
            OtlpSetting::Broken {
                collector: BrokenCollector::Dead,
                endpoint,
            } => write!(
                f,
                "every request traced (sampling 1.0), exported to a DEAD collector ({endpoint}: nothing listens)"
            ),
            OtlpSetting::Broken {
                collector: BrokenCollector::Stalled,
                endpoint,
            } => write!(
                f,
                "every request traced (sampling 1.0), exported to a STALLED collector ({endpoint}: accepts, never answers)"
            ),
        }
    }
}

/// The run's collector; a stalled one runs until this is dropped.
pub struct Collector {
    pub setting: OtlpSetting,
    stalled: Option<JoinHandle<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(task) = &self.stalled {
            task.abort();
        }
    }
}

impl Collector {
    /// From `--otlp-endpoint` or `--otlp` (clap keeps them exclusive). Must run
    /// inside the bench's runtime (a stalled collector is a task on it).
    pub async fn start(
        endpoint: Option<&str>,
        broken: Option<BrokenCollector>,
    ) -> Result<Collector> {
        let (setting, stalled) = match (endpoint, broken) {
            (Some(endpoint), _) => (
                OtlpSetting::Endpoint {
                    endpoint: with_scheme(endpoint),
                },
                None,
            ),
            (None, Some(BrokenCollector::Dead)) => {
                // Bound and released at once: nothing listens there afterwards.
                let addr = free_loopback_port()?;
                (
                    OtlpSetting::Broken {
                        collector: BrokenCollector::Dead,
                        endpoint: format!("http://{addr}"),
                    },
                    None,
                )
            }
            (None, Some(BrokenCollector::Stalled)) => {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("binding the stalled collector's listener")?;
                let addr = listener.local_addr()?;
                (
                    OtlpSetting::Broken {
                        collector: BrokenCollector::Stalled,
                        endpoint: format!("http://{addr}"),
                    },
                    Some(tokio::spawn(stall(listener))),
                )
            }
            (None, None) => (OtlpSetting::Off, None),
        };
        Ok(Collector { setting, stalled })
    }

    /// The proxies' `PLEXUS_OTLP_ENDPOINT`, if tracing is on.
    pub fn endpoint(&self) -> Option<&str> {
        match &self.setting {
            OtlpSetting::Off => None,
            OtlpSetting::Endpoint { endpoint } | OtlpSetting::Broken { endpoint, .. } => {
                Some(endpoint)
            }
        }
    }
}

/// `host:port` as the OTLP/gRPC exporter wants it: a URL.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// Accepts connections and holds them open without reading or writing.
async fn stall(listener: TcpListener) {
    let mut held = Vec::new();
    while let Ok((stream, _)) = listener.accept().await {
        if held.len() < STALLED_MAX_CONNECTIONS {
            held.push(stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_stalled_collector_accepts_and_never_answers() {
        let collector = Collector::start(None, Some(BrokenCollector::Stalled))
            .await
            .unwrap();
        let endpoint = collector.endpoint().unwrap();
        assert!(collector.setting.to_string().contains("STALLED"));
        let addr = endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        assert!(read.is_err(), "the stalled collector answered: {read:?}");
    }

    #[tokio::test]
    async fn a_dead_collector_refuses_connections() {
        let collector = Collector::start(None, Some(BrokenCollector::Dead))
            .await
            .unwrap();
        assert!(collector.setting.to_string().contains("DEAD"));
        let addr = collector.endpoint().unwrap().trim_start_matches("http://");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_given_endpoint_gets_a_scheme_and_off_traces_nothing() {
        let given = Collector::start(Some("127.0.0.1:4317"), None)
            .await
            .unwrap();
        assert_eq!(given.endpoint(), Some("http://127.0.0.1:4317"));
        let off = Collector::start(None, None).await.unwrap();
        assert_eq!(off.endpoint(), None);
        assert_eq!(off.setting.to_string(), "off");
    }
}

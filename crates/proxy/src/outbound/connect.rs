//! The connect step of opaque TCP: to one of a meshed target's endpoints'
//! proxies over mTLS (never downgraded to plaintext if that fails), else to
//! the original destination. HTTP requests connect in `crate::transport`.

use bytes::Bytes;
use tokio::net::TcpStream;

use super::Outbound;
use super::route::Route;
use crate::drain;
use crate::opaque;
use crate::transport::{MeshConnect, connect_mesh};

pub(super) async fn opaque(
    outbound: &Outbound,
    stream: TcpStream,
    prefix: Bytes,
    route: Route,
    drain: drain::Watch,
) {
    let Some(addr) = route.addr else {
        tracing::debug!(
            direction = "outbound",
            "opaque connection with no original destination: closed"
        );
        return;
    };
    let idle = outbound.http.idle_timeout;
    let meshed = match (&outbound.mesh, &route.target) {
        (Some(mesh), Some(target)) => {
            opaque::meshed_endpoint(&target.borrow()).map(|(endpoint, expected)| {
                let tls = MeshConnect {
                    mesh: mesh.clone(),
                    expected,
                    metrics: outbound.tls_metrics.clone(),
                };
                (endpoint, tls)
            })
        }
        _ => None,
    };
    match meshed {
        Some((endpoint, tls)) => {
            match connect_mesh(endpoint, outbound.connect_timeout, tls).await {
                Ok(upstream) => {
                    let copied = opaque::proxy_until_closed(stream, upstream, &prefix, idle, drain);
                    if let Err(e) = copied.await {
                        tracing::debug!(addr = %endpoint, error = %e, "opaque connection ended");
                    }
                }
                Err(e) => {
                    tracing::info!(%addr, %endpoint, error = %e, "opaque mTLS connection failed")
                }
            }
        }
        None => {
            opaque::forward(
                stream,
                prefix,
                addr,
                None,
                outbound.connect_timeout,
                idle,
                drain,
            )
            .await
        }
    }
}

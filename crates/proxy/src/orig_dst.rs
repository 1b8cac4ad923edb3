//! The address a redirected connection was originally sent to.
//!
//! iptables' `REDIRECT` rewrites the destination to the proxy's listener and
//! keeps the original in conntrack, where `SO_ORIGINAL_DST` reads it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

/// Finds where an accepted connection was originally headed. Tests replace
/// the kernel lookup, since they cannot redirect without iptables.
pub type OriginalDst = Arc<dyn Fn(&TcpStream) -> Option<SocketAddr> + Send + Sync>;

/// The kernel's answer, or `None` when the connection was not redirected (no
/// conntrack entry, or the entry names the listener itself).
pub fn kernel() -> OriginalDst {
    Arc::new(|stream: &TcpStream| {
        let local = stream.local_addr().ok()?;
        let original = sys::original_dst(stream, local.is_ipv6())?;
        (original != local).then_some(original)
    })
}

#[cfg(target_os = "linux")]
mod sys {
    use std::net::SocketAddr;

    use socket2::SockRef;
    use tokio::net::TcpStream;

    /// `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6): the
    /// option is per family, so the listener's family picks it.
    pub fn original_dst(stream: &TcpStream, ipv6: bool) -> Option<SocketAddr> {
        let socket = SockRef::from(stream);
        let original = if ipv6 {
            socket.original_dst_v6()
        } else {
            socket.original_dst_v4()
        };
        original.ok()?.as_socket()
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn original_dst(_: &tokio::net::TcpStream, _: bool) -> Option<std::net::SocketAddr> {
        None
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_dst() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(super::kernel()(&server), None);
    }
}

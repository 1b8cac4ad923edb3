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
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use tokio::net::TcpStream;

    pub fn original_dst(stream: &TcpStream, ipv6: bool) -> Option<SocketAddr> {
        let fd = stream.as_raw_fd();
        if ipv6 {
            // SAFETY: an all-zero sockaddr_in6 is a valid value.
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            getsockopt(fd, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST, &mut addr)?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(addr.sin6_addr.s6_addr),
                u16::from_be(addr.sin6_port),
                addr.sin6_flowinfo,
                addr.sin6_scope_id,
            )))
        } else {
            // SAFETY: an all-zero sockaddr_in is a valid value.
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            getsockopt(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST, &mut addr)?;
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                u16::from_be(addr.sin_port),
            )))
        }
    }

    fn getsockopt<T>(fd: i32, level: i32, name: i32, value: &mut T) -> Option<()> {
        let mut len = std::mem::size_of::<T>() as libc::socklen_t;
        // SAFETY: `value` is a valid, writable T and `len` is its size; the
        // kernel writes at most `len` bytes.
        let rc = unsafe { libc::getsockopt(fd, level, name, (value as *mut T).cast(), &mut len) };
        (rc == 0).then_some(())
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

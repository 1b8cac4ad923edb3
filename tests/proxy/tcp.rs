//! Opaque TCP through the real listeners: echo, server-speaks-first on an
//! opaque port, and the detection timeout for one on a port that is not.

use std::time::Duration;

use plexus_tests::proxy::*;
use plexus_tests::upstream::*;
use plexus_tests::wait::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    bounded("read", stream.read_exact(&mut buf)).await.unwrap();
    buf
}

#[tokio::test]
async fn opaque_tcp_is_echoed_with_half_close() {
    let app = tcp_upstream(b"").await;
    let proxy = proxy().env("PLEXUS_INBOUND_APP_ADDR", app).start().await;
    let mut stream = TcpStream::connect(proxy.inbound_addr).await.unwrap();
    // Not HTTP: detection sees a binary first byte and goes opaque at once.
    stream.write_all(b"\x00\x01binary hello").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 14).await, b"\x00\x01binary hello");
    stream.write_all(b" and more").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded("read to end", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b" and more", "the app saw our half-close and closed");
}

#[tokio::test]
async fn server_speaks_first_on_an_opaque_port_does_not_wait() {
    let db = tcp_upstream(b"220 greetings from the server\r\n").await;
    // Outbound, redirected to the database's port, listed as opaque; a long
    // detection timeout shows the opaque port skips detection.
    let proxy = proxy()
        .original_dst(db)
        .env("PLEXUS_OPAQUE_PORTS", db.port())
        .env("PLEXUS_DETECT_TIMEOUT_MS", 60_000)
        .start()
        .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    let greeting = read_exactly(&mut stream, 31).await;
    assert_eq!(greeting, b"220 greetings from the server\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    stream.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 6).await, b"QUIT\r\n");
}

#[tokio::test]
async fn server_speaks_first_elsewhere_starts_after_the_detection_timeout() {
    let db = tcp_upstream(b"* OK ready\r\n").await;
    let proxy = proxy()
        .env("PLEXUS_INBOUND_APP_ADDR", db)
        .env("PLEXUS_INBOUND_OPAQUE_PORTS", "")
        .env("PLEXUS_DETECT_TIMEOUT_MS", 300)
        .start()
        .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.inbound_addr).await.unwrap();
    assert_eq!(read_exactly(&mut stream, 12).await, b"* OK ready\r\n");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "greeting came before the timeout: {waited:?}"
    );
    stream.write_all(b"a1 LOGOUT\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 11).await, b"a1 LOGOUT\r\n");
}

#[tokio::test]
async fn outbound_tls_and_other_protocols_pass_through_to_the_original_destination() {
    let app = tcp_upstream(b"").await;
    let proxy = proxy().original_dst(app).start().await;
    let mut stream = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    // The start of a TLS ClientHello: opaque on outbound.
    let hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00";
    stream.write_all(hello).await.unwrap();
    assert_eq!(read_exactly(&mut stream, hello.len()).await, hello);
}

#[tokio::test]
async fn garbage_without_a_destination_is_closed() {
    let proxy = proxy().start().await;
    let mut stream = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    stream.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    bounded("close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

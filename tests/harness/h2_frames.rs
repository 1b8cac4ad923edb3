//! Raw HTTP/2 frames, for tests that send what no client library would
//! (control-frame floods): building frames, a flood written without reading,
//! and what a server sent split back into frames.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
/// The flag of a PING or SETTINGS that answers one.
pub const ACK: u8 = 0x1;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const NO_ERROR: u32 = 0x0;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small payload")
        .to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's error code.
    pub fn error_code(&self) -> Option<u32> {
        let code = self.payload.get(4..8)?;
        Some(u32::from_be_bytes(code.try_into().ok()?))
    }
}

/// Splits what a server sent into frames; a truncated last frame is dropped.
pub fn frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let Some(payload) = bytes.get(9..9 + len) else {
            break;
        };
        frames.push(Frame {
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
            payload: payload.to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    frames
}

/// What came of a [`flood`].
pub struct Flooded {
    /// How writing the flood ended: `Ok` when the server read all of it.
    pub written: io::Result<()>,
    /// Every byte the server sent.
    pub bytes: Vec<u8>,
    /// How the server's side ended: `Ok` for an orderly close, `Err` for a reset.
    pub end: io::Result<()>,
}

/// Connects to `addr`, sends the preface, an empty SETTINGS and `count`
/// copies of `flood` without reading, then reads until the server closes.
/// Each half must end within `bound` (writing ends early if the server
/// closes first), or the test fails.
pub async fn flood(addr: SocketAddr, flood: &[u8], count: usize, bound: Duration) -> Flooded {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(flood.repeat(count));
    let written = tokio::time::timeout(bound, write.write_all(&bytes))
        .await
        .unwrap_or_else(|_| panic!("the flood is neither read nor refused within {bound:?}"));
    let mut got = Vec::new();
    let end = tokio::time::timeout(bound, read.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("the server did not close within {bound:?}"));
    Flooded {
        written,
        bytes: got,
        end: end.map(drop),
    }
}

use std::time::Duration;

/// HTTP/2 keep-alive on the control-plane connection, which both ends run:
/// the proxy pings the controller and the controller pings the proxy, each a
/// PING every `interval` and the connection closed when its ACK takes longer
/// than `timeout`. Watches are long-lived and mostly quiet, so without it a
/// peer gone silently (packets dropped, no RST) or one that never reads (a
/// PING or SETTINGS flood whose ACKs it ignores) would hold the stream for
/// ever; with it, either is noticed within `interval + timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl KeepAlive {
    /// What both binaries use: a dead peer noticed within 20 s, at the cost of
    /// one PING frame per connection every 10 s.
    pub const CONTROL_PLANE: Self = Self {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(10),
    };

    /// The longest a silent peer goes unnoticed.
    pub fn bound(self) -> Duration {
        self.interval + self.timeout
    }
}

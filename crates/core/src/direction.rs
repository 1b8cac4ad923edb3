/// Which side of a proxy a request or connection crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local application to a service: the proxy is the client.
    Outbound,
    /// From a client to the local application: the proxy is the server.
    Inbound,
}

impl Direction {
    /// The label value in metrics and logs: `outbound` or `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

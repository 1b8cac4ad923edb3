//! Port sets and networks as Plexus writes them in flags and annotations: ports,
//! port ranges and CIDRs, alone or in comma-separated lists.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A TCP port or an inclusive range of ports, written `8080`, `8000-8100` or `8000:8100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("`{0}` is not a port (expected 1-65535, or a range like 8000-8100)")]
    Port(String),
    #[error("`{0}` is not a range with first <= last")]
    Range(String),
    #[error("`{0}` is not a CIDR (expected an address and a prefix, like 10.0.0.0/8 or fd00::/8)")]
    Cidr(String),
}

impl FromStr for PortRange {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(ParseError::Port(s.to_string())),
            Ok(n) => Ok(n),
        };
        let (first, last) = match s.split_once(['-', ':']) {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(ParseError::Range(s.to_string()));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    /// The form `--dport` takes: `8080` or `8000:8100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err = || ParseError::Cidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a comma-separated list (`"22, 8000-8100"`); an empty string is an empty list.
pub fn parse_list<T: FromStr>(s: &str) -> Result<Vec<T>, T::Err> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_in_every_spelling() {
        let got: Vec<PortRange> = parse_list(" 22,8000-8100, 9000:9001 ,").unwrap();
        let text: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["22", "8000:8100", "9000:9001"]);
    }

    #[test]
    fn bad_ports_are_errors_that_quote_the_value() {
        assert_eq!("0".parse::<PortRange>(), Err(ParseError::Port("0".into())));
        assert_eq!(
            "70000".parse::<PortRange>(),
            Err(ParseError::Port("70000".into()))
        );
        assert_eq!(
            "90-80".parse::<PortRange>(),
            Err(ParseError::Range("90-80".into()))
        );
        assert!(parse_list::<PortRange>("22,http").is_err());
    }

    #[test]
    fn cidrs_parse_for_both_families() {
        let got: Vec<Cidr> = parse_list("10.0.0.0/8,fd00::/8,192.168.1.1").unwrap();
        let text: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["10.0.0.0/8", "fd00::/8", "192.168.1.1/32"]);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
    }
}

//! Sets of TCP ports: the opaque ones of the environment and of a policy.

use std::str::FromStr;

/// A set of TCP ports, e.g. the opaque ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<u16>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }
}

impl FromStr for PortSet {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ports = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()?;
        ports.sort_unstable();
        ports.dedup();
        Ok(Self(ports))
    }
}

impl<const N: usize> From<[u16; N]> for PortSet {
    fn from(ports: [u16; N]) -> Self {
        ports.into_iter().collect()
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<T: IntoIterator<Item = u16>>(iter: T) -> Self {
        let mut ports: Vec<u16> = iter.into_iter().collect();
        ports.sort_unstable();
        ports.dedup();
        Self(ports)
    }
}

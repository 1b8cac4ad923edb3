//! Sets of TCP ports: the opaque ones of the environment and of a policy.

use std::str::FromStr;

use plexus_core::ports::parse_list;

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

    /// `3306, 5432`: the list syntax every Plexus crate reads ports in.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(parse_list::<u16>(s)?.into_iter().collect())
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

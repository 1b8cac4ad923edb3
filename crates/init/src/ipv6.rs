//! Whether the pod has IPv6, read from `/proc/net/if_inet6`.

/// True when any interface other than `lo` has a global-scope IPv6 address, i.e. the pod can
/// carry IPv6 traffic that the rules must catch too.
///
/// Each line of `/proc/net/if_inet6` is `address ifindex prefix-length scope flags name`, all
/// hexadecimal; scope `00` is global.
pub fn has_routable_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, _, _, "00", _, name] if *name != "lo")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_only_is_not_ipv6() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000a8a4e0fffe3b1c2d 02 40 20 80     eth0
";
        assert!(!has_routable_ipv6(text));
        assert!(!has_routable_ipv6(""));
    }

    #[test]
    fn a_global_address_on_eth0_is_ipv6() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000005 02 40 00 80     eth0
";
        assert!(has_routable_ipv6(text));
    }
}

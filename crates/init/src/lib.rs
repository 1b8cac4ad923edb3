//! Builds and applies the iptables rules that send a pod's traffic through its proxy.

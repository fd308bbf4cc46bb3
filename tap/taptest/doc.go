// Package taptest provides test helpers for code built on package tap: a
// channel-backed [tap.Device] (modelled on wireguard-go's tun/tuntest) and
// builders and parsers for Ethernet, ARP, IPv4/UDP and IPv4/TCP frames with
// correct checksums.
package taptest

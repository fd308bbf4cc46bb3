package sweep

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// CheckTarget returns an error unless rawURL is an http or https URL with a
// host, and, when allowRemote is false, that host is on loopback: a literal
// address in 127.0.0.0/8 or ::1, or "localhost" resolving (through
// /etc/hosts) to loopback addresses only. Other names are refused without
// being looked up.
func CheckTarget(ctx context.Context, rawURL string, allowRemote bool) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("sweep: target %q: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("sweep: target %q: scheme must be http or https", rawURL)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("sweep: target %q: no host", rawURL)
	}
	if allowRemote {
		return nil
	}
	refuse := fmt.Errorf("sweep: target %q is not on loopback; pass -allow-remote (AllowRemote) to load other hosts", rawURL)
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Unmap().IsLoopback() {
			return refuse
		}
		return nil
	}
	if !strings.EqualFold(host, "localhost") {
		return refuse
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("sweep: target %q: %w", rawURL, err)
	}
	if len(addrs) == 0 {
		return refuse
	}
	for _, a := range addrs {
		if !a.Unmap().IsLoopback() {
			return refuse
		}
	}
	return nil
}

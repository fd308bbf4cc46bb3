// Package policy decides which destinations a network client may reach:
// an egress allow-list of hostnames (with wildcards), CIDRs and ports.
//
// quench-host applies a [Policy] to the enclave's outbound TCP and UDP and to
// its DNS queries (names the policy does not allow get NXDOMAIN). Because the
// host is untrusted, an enclave can apply the same policy in its own,
// attested configuration (enclave.Config.Egress, quench-enclave -allow): to
// the Go code that dials through package enclave and, in TAP mode, to every
// program's frames.
//
// Hostname rules match destinations by the names they were resolved from:
// the resolver records which addresses an allowed name resolved to ([Learned]),
// and a connection to such an address is allowed on that rule's ports.
package policy

//go:build !unix

package host

// fileLimit is unknown off Unix; FileLimit then assumes 1024.
func fileLimit() (uint64, bool) { return 0, false }

//go:build !unix

package filelimit

// fileLimit is unknown off Unix; Get then assumes 1024.
func fileLimit() (uint64, bool) { return 0, false }

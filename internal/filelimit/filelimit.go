// Package filelimit reports the process's open-file limit, from which
// quench-host's and the enclave's connection limits take their defaults.
package filelimit

// Get returns the process's open-file limit (the soft RLIMIT_NOFILE, which
// Go raises to the hard limit at start-up), or 1024 if unknown.
func Get() int {
	if n, ok := fileLimit(); ok && n > 0 {
		return int(min(n, 1<<30))
	}
	return 1024
}

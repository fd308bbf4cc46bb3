//go:build unix

package filelimit

import "syscall"

// fileLimit returns the soft RLIMIT_NOFILE.
func fileLimit() (uint64, bool) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return uint64(rl.Cur), true
}

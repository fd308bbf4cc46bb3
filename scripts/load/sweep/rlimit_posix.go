//go:build linux || darwin

package sweep

import "syscall"

// RaiseNoFile raises this process's open-file limit, which the load tools
// inherit, so they can hold need open files: the soft limit goes up to the
// hard limit, or both go up to need when the hard limit is lower and the
// process may raise it (root). The result's Message says what happened.
func RaiseNoFile(need uint64) (NoFile, error) {
	return raiseNoFile(need, rlimitFuncs{
		get: func() (uint64, uint64, error) {
			var r syscall.Rlimit
			err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
			return uint64(r.Cur), uint64(r.Max), err
		},
		set: func(soft, hard uint64) error {
			r := syscall.Rlimit{Cur: soft, Max: hard}
			return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
		},
	})
}

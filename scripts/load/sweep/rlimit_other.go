//go:build !linux && !darwin

package sweep

import (
	"errors"
	"fmt"
	"runtime"
)

// RaiseNoFile is not supported on this platform; it returns an error
// wrapping errors.ErrUnsupported.
func RaiseNoFile(need uint64) (NoFile, error) {
	return NoFile{Need: need}, fmt.Errorf("sweep: open-file limit on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

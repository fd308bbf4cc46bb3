//go:build !linux

package tap

import (
	"errors"
	"fmt"
	"runtime"
)

func createTAP(TAPConfig) (Device, error) {
	return nil, fmt.Errorf("tap: TAP devices are not implemented on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

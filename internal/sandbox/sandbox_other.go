//go:build !linux

package sandbox

import (
	"fmt"
	"os"

	"golang.org/x/net/bpf"
)

// Filter fails: seccomp is Linux's.
func Filter() ([]bpf.RawInstruction, error) { return nil, ErrUnsupported }

// Install fails: seccomp is Linux's.
func Install() error { return ErrUnsupported }

// Main fails: seccomp is Linux's.
func Main([]string) int {
	fmt.Fprintf(os.Stderr, "quench-enclave: %v\n", ErrUnsupported)
	return 127
}

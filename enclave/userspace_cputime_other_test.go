//go:build !unix

package enclave_test

import "time"

// usCPUTime is not measured on this platform.
func usCPUTime() time.Duration { return 0 }

package sweep_test

import (
	"context"
	"testing"

	"github.com/quenchnet/quench/scripts/load/sweep"
)

func TestCheckTarget(t *testing.T) {
	tests := []struct {
		url         string
		allowRemote bool
		ok          bool
	}{
		{"http://127.0.0.1:8080/", false, true},
		{"https://127.3.4.5/x", false, true},
		{"http://[::1]:80/", false, true},
		{"http://[::ffff:127.0.0.1]:80/", false, true},
		{"http://localhost:8080/hello", false, true},
		{"http://LOCALHOST/", false, true},
		{"http://10.0.0.1/", false, false},
		{"http://192.168.127.2/", false, false},
		{"http://[2001:db8::1]/", false, false},
		{"http://0.0.0.0/", false, false},
		{"http://example.com/", false, false},
		{"http://127.0.0.1.nip.io/", false, false},
		{"https://enclave.example.com/", true, true},
		{"http://10.0.0.1/", true, true},
		{"ftp://127.0.0.1/", false, false},
		{"127.0.0.1:8080", false, false},
		{"http:///path", true, false},
		{"http://%zz/", false, false},
	}
	for _, tc := range tests {
		err := sweep.CheckTarget(context.Background(), tc.url, tc.allowRemote)
		if (err == nil) != tc.ok {
			t.Errorf("CheckTarget(%q, allowRemote=%v) = %v, want ok=%v", tc.url, tc.allowRemote, err, tc.ok)
		}
	}
}

package enclave_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
)

// TestAttestedTransport: attestation.Transport against the enclave's HTTPS
// server, both front ends (net/http with an in-process handler, the proxy's
// event loops with an AppURL): the enclave keeps the connection open after
// the document, so the first request and the ones after it go over the
// connection that was verified, and the document is fetched once.
func TestAttestedTransport(t *testing.T) {
	for _, proxied := range []bool{false, true} {
		t.Run(fmt.Sprintf("proxied=%v", proxied), func(t *testing.T) {
			var env *svEnv
			if proxied {
				app := svApp(t, func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(w, "hello from the app at %s", r.URL.Path)
				})
				env = svStart(t, func(c *enclave.Config) { c.Handler = nil; c.AppURL = app })
			} else {
				env = svStart(t, nil)
			}
			var dials, verifications atomic.Int32
			tr, err := attestation.NewTransport(attestation.ClientConfig{
				Options: attestation.Options{
					Roots: env.dev.Roots(),
					PCRs:  map[uint][]byte{0: make([]byte, 48)}, // the development attester's
				},
				AnyImage:  true, // all-zero PCRs, as a debug-mode enclave's
				TLSConfig: &tls.Config{InsecureSkipVerify: true},
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				},
				OnVerify: func(string, *attestation.Result) { verifications.Add(1) },
			})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for i := range 3 {
				resp, err := c.Get(env.public + "/p")
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !bytes.Equal(b, []byte("hello from the app at /p")) {
					t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
				}
			}
			if d, v := dials.Load(), verifications.Load(); d != 1 || v != 1 {
				t.Errorf("%d connections, %d verifications; want 1, 1", d, v)
			}
		})
	}
}

package attestationtest_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net/http"
	"testing"
	"time"

	"github.com/hf/nsm/request"
	"github.com/hf/nsm/response"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

func TestFakeNSMRequests(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{ModuleID: "fake-module"})
	f := attestationtest.NewFakeNSM(dev)
	tests := []struct {
		name string
		req  request.Request
		ok   func(response.Response) bool
	}{
		{"describe", &request.DescribeNSM{}, func(r response.Response) bool {
			return r.DescribeNSM != nil && r.DescribeNSM.ModuleID == "fake-module" && r.DescribeNSM.Digest == response.DigestSHA384
		}},
		{"random", &request.GetRandom{}, func(r response.Response) bool { return r.GetRandom != nil && len(r.GetRandom.Random) == 256 }},
		{"attestation", &request.Attestation{Nonce: []byte("n")}, func(r response.Response) bool {
			return r.Attestation != nil && len(r.Attestation.Document) > 0
		}},
		{"too large", &request.Attestation{Nonce: make([]byte, attestation.MaxNonceSize+1)}, func(r response.Response) bool {
			return r.Error == response.ECInputTooLarge
		}},
		{"unsupported", &request.LockPCRs{Range: 16}, func(r response.Response) bool { return r.Error == response.ECInvalidOperation }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := f.Send(tt.req)
			if err != nil || !tt.ok(res) {
				t.Fatalf("Send = %+v, %v", res, err)
			}
		})
	}
	if n := f.Attestations(); n != 2 {
		t.Errorf("Attestations() = %d, want 2", n)
	}
	if err := f.Close(); err != nil || !f.Closed() {
		t.Fatal("Close")
	}
	if _, err := f.Send(&request.GetRandom{}); err == nil {
		t.Error("Send after Close succeeded")
	}
	if _, err := f.Read(make([]byte, 8)); err == nil {
		t.Error("Read after Close succeeded")
	}
}

func TestNewServerBindsItsCertificate(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	srv := attestationtest.NewServer(t, dev)
	res, err := attestation.VerifyRemote(context.Background(), srv.URL, attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: dev.Roots()},
		TLSConfig: &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs},
	})
	if err != nil {
		t.Fatal(err)
	}
	ud, err := attestation.ParseUserData(res.UserData)
	if err != nil || ud.TLSCertHash != attestation.CertHash(srv.Certificate().Raw) || ud.HasAppKey() {
		t.Fatalf("user data %x (%v) does not bind the server certificate alone", res.UserData, err)
	}
}

// Drive the production NSM attester without /dev/nsm.
func ExampleNewFakeNSM() {
	dev, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		log.Fatal(err)
	}
	nsm, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: attestationtest.NewFakeNSM(dev)})
	if err != nil {
		log.Fatal(err)
	}
	defer nsm.Close()
	doc, err := nsm.Attest(context.Background(), attestation.Request{Nonce: []byte("challenge")})
	if err != nil {
		log.Fatal(err)
	}
	res, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: []byte("challenge")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Checks)
	// Output: [signature certificate_chain nonce]
}

package attestation_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/quenchnet/quench/attestation"
)

// Verify a stored document at a fixed time against the AWS root, requiring
// a PCR value and a nonce.
func ExampleVerify() {
	b, err := os.ReadFile("testdata/nitro-attestation-2022-07-12.b64")
	if err != nil {
		log.Fatal(err)
	}
	doc, err := attestation.DecodeDocument(b)
	if err != nil {
		log.Fatal(err)
	}
	res, err := attestation.Verify(doc, attestation.Options{
		Time:  time.Date(2022, 7, 12, 21, 0, 0, 0, time.UTC),
		PCRs:  map[uint][]byte{0: make([]byte, 48)}, // a debug-mode enclave
		Nonce: []byte{0xef, 0xdf, 0x3c, 0xd3, 0xcf, 0x76, 0xf3, 0x9e, 0xf6, 0xf7, 0xce, 0xfd},
	})
	var pcrErr *attestation.PCRMismatchError
	switch {
	case errors.As(err, &pcrErr):
		log.Fatalf("unexpected image: PCR%d differs", pcrErr.Index)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(res.ModuleID, res.Checks)
	// Output: i-029e0eacb65267caa-enc0181f3b11fbd2d84 [signature certificate_chain pcrs nonce]
}

// An enclave serves attestation documents binding its TLS certificate. In
// production the attester is attestation.NewNSMAttester(attestation.NSMConfig{});
// the development attester is for simulations.
func ExampleNewHandler() {
	dev, err := attestation.NewDevAttester(attestation.DevConfig{Logger: slog.Default()})
	if err != nil {
		log.Fatal(err)
	}
	// Verifiers of simulated enclaves need the development root.
	if err := dev.WriteRootPEM("/tmp/quench-dev-root.pem"); err != nil {
		log.Fatal(err)
	}
	var cert tls.Certificate // the enclave's serving certificate
	h, err := attestation.NewHandler(attestation.HandlerConfig{
		Attester: dev,
		UserData: func() ([]byte, error) {
			if len(cert.Certificate) == 0 {
				return nil, errors.New("no certificate yet")
			}
			return attestation.UserData{TLSCertHash: attestation.CertHash(cert.Certificate[0])}.Marshal(), nil
		},
		Logger: slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	r := chi.NewRouter()
	r.Get(attestation.Path, h)
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	_ = srv
}

// A client checks that it talks TLS to the audited enclave image: the
// enclave's certificate is self-signed, and the attestation document binding
// it is what authenticates it.
func ExampleVerifyRemote() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := attestation.VerifyRemote(ctx, "https://enclave.example.com", attestation.RemoteConfig{
		Options: attestation.Options{
			Time:   time.Now(),
			PCRs:   map[uint][]byte{0: make([]byte, 48)}, // the audited image's PCR0
			MaxAge: time.Minute,
		},
		TLSConfig: &tls.Config{InsecureSkipVerify: true}, // the document authenticates the certificate
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("attested enclave", res.ModuleID)
}

// At enclave start, seed the kernel's entropy pool from the NSM.
// A client auditing what an enclave served by quench promises (its egress
// policy, how its app is held) before sending it anything: the
// configuration comes back only if the document binds it, and the PCR pins
// it to the audited image.
func ExampleVerifyRemoteConfig() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, config, err := attestation.VerifyRemoteConfig(ctx, "https://enclave.example.com", attestation.RemoteConfig{
		Options: attestation.Options{
			Time: time.Now(),
			PCRs: map[uint][]byte{0: make([]byte, 48)}, // the audited image's PCR0
		},
		TLSConfig: &tls.Config{InsecureSkipVerify: true}, // the document authenticates the certificate
	})
	if err != nil {
		log.Fatal(err)
	}
	var c struct {
		Egress []string `json:"egress"` // nil: no policy
	}
	if err := json.Unmarshal(config, &c); err != nil {
		log.Fatal(err)
	}
	fmt.Println("the enclave may connect to", c.Egress)
}

func ExampleSeedEntropy() {
	nsm, err := attestation.NewNSMAttester(attestation.NSMConfig{})
	if err != nil {
		log.Fatal(err) // not in an enclave: attestation.ErrNoNSM
	}
	defer nsm.Close()
	if err := attestation.SeedEntropy(nsm, 256); err != nil && !errors.Is(err, attestation.ErrEntropyNotCredited) {
		log.Fatal(err)
	}
}

// A client of an enclave app: every connection of the http.Client goes to
// an enclave running your image (PCR0 from nitro-cli build-enclave) and
// holding the certificate its attestation document binds; a connection
// that fails the check fails the request before anything is sent.
func ExampleNewTransport() {
	pcr0, err := hex.DecodeString(os.Getenv("ENCLAVE_PCR0")) // 96 hex digits
	if err != nil {
		log.Fatal(err)
	}
	tr, err := attestation.NewTransport(attestation.ClientConfig{
		Options: attestation.Options{PCRs: map[uint][]byte{0: pcr0}, MaxAge: 5 * time.Minute},
		// The enclave's certificate is self-signed; the document authenticates it.
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
		OnVerify: func(addr string, res *attestation.Result) {
			slog.Info("verified enclave", "addr", addr, "module", res.ModuleID)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	client := tr.Client()
	resp, err := client.Post("https://enclave.example.com/api/secret", "application/json", nil)
	if errors.Is(err, attestation.ErrPCRMismatch) {
		log.Fatal("the server is not running our enclave image")
	}
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}

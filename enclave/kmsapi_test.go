package enclave_test

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/kms/kmstest"
	"github.com/quenchnet/quench/enclave"
)

// postJSON posts body to u and decodes a 200 answer into out; it returns
// the status and the body.
func postJSON(t *testing.T, u string, body any, out any) (int, string) {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	resp, err := http.Post(u, "application/json", rd)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: %v: %s", u, err, b)
		}
	}
	return resp.StatusCode, string(b)
}

// An app in any language gets a Recipient for its KMS call from the
// internal server, and has the answer opened there: the document binds a
// key only quench-enclave holds.
func TestKMSEndpoints(t *testing.T) {
	env := svStart(t, nil)
	var rec enclave.KMSRecipientResponse
	if code, body := postJSON(t, env.intBase+enclave.KMSRecipientPath, nil, &rec); code != http.StatusOK {
		t.Fatalf("recipient: %d %s", code, body)
	}
	if rec.KeyEncryptionAlgorithm != "RSAES_OAEP_SHA_256" || rec.ID == "" {
		t.Fatalf("recipient: %+v", rec)
	}
	if exp, err := time.Parse(time.RFC3339, rec.Expires); err != nil || time.Until(exp) < enclave.KMSRecipientTTL-time.Minute {
		t.Errorf("expires %q (%v), want about %v from now", rec.Expires, err, enclave.KMSRecipientTTL)
	}
	doc, err := base64.StdEncoding.DecodeString(rec.AttestationDocument)
	if err != nil {
		t.Fatal(err)
	}
	res, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: env.dev.Roots()})
	if err != nil {
		t.Fatalf("the recipient's document does not verify: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(res.PublicKey)
	if err != nil {
		t.Fatalf("public_key: %v", err)
	}
	sealed, err := kmstest.Seal(pub.(*rsa.PublicKey), []byte("the data key"))
	if err != nil {
		t.Fatal(err)
	}

	var out enclave.KMSDecryptResponse
	req := enclave.KMSDecryptRequest{ID: rec.ID, CiphertextForRecipient: base64.StdEncoding.EncodeToString(sealed)}
	if code, body := postJSON(t, env.intBase+enclave.KMSDecryptPath, req, &out); code != http.StatusOK {
		t.Fatalf("decrypt: %d %s", code, body)
	}
	if got, _ := base64.StdEncoding.DecodeString(out.Plaintext); string(got) != "the data key" {
		t.Errorf("plaintext %q, want %q", got, "the data key")
	}

	// Errors: unknown recipient, bad base64, an envelope for another
	// recipient's key, garbage, GET.
	var rec2 enclave.KMSRecipientResponse
	postJSON(t, env.intBase+enclave.KMSRecipientPath, nil, &rec2)
	for _, c := range []struct {
		name string
		req  enclave.KMSDecryptRequest
		code int
		want string
	}{
		{"unknown id", enclave.KMSDecryptRequest{ID: "nope", CiphertextForRecipient: req.CiphertextForRecipient}, http.StatusNotFound, "no such recipient"},
		{"not base64", enclave.KMSDecryptRequest{ID: rec.ID, CiphertextForRecipient: "!!"}, http.StatusBadRequest, "not base64"},
		{"another recipient's", enclave.KMSDecryptRequest{ID: rec2.ID, CiphertextForRecipient: req.CiphertextForRecipient}, http.StatusUnprocessableEntity, ""},
		{"garbage", enclave.KMSDecryptRequest{ID: rec.ID, CiphertextForRecipient: base64.StdEncoding.EncodeToString([]byte("garbage"))}, http.StatusBadRequest, ""},
	} {
		code, body := postJSON(t, env.intBase+enclave.KMSDecryptPath, c.req, nil)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want %d with %q", c.name, code, body, c.code, c.want)
		}
	}
	resp, err := http.Get(env.intBase + enclave.KMSRecipientPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET recipient: %s, want 405", resp.Status)
	}
}

// With pprof on, attestation is refused: so are KMS recipients.
func TestKMSRecipientRefusedWithPprof(t *testing.T) {
	env := svStart(t, func(c *enclave.Config) { c.Pprof = true })
	if code, body := postJSON(t, env.intBase+enclave.KMSRecipientPath, nil, nil); code != http.StatusServiceUnavailable || !strings.Contains(body, "pprof") {
		t.Errorf("recipient with pprof: %d %s, want 503 naming pprof", code, body)
	}
}

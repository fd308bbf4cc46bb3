package enclave

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/quenchnet/quench/attestation/kms"
)

// Paths of the internal server's KMS endpoints, for apps in any language
// that call AWS KMS with a Recipient (package attestation/kms is the same
// for Go apps): the private key stays in quench-enclave.
const (
	// KMSRecipientPath: POST makes a Recipient and answers
	// KMSRecipientResponse.
	KMSRecipientPath = "/enclave/kms/recipient"
	// KMSDecryptPath: POST KMSDecryptRequest opens a CiphertextForRecipient
	// and answers KMSDecryptResponse.
	KMSDecryptPath = "/enclave/kms/decrypt"
)

// Bounds of the KMS endpoints.
const (
	// KMSRecipientTTL is how long a Recipient made by POST
	// /enclave/kms/recipient can open answers.
	KMSRecipientTTL = 10 * time.Minute
	// KMSMaxRecipients bounds the Recipients kept; making one more drops
	// the oldest.
	KMSMaxRecipients = 16
)

// KMSRecipientResponse is the answer of POST /enclave/kms/recipient: what
// goes into the Recipient parameter of a KMS Decrypt, GenerateDataKey or
// GenerateRandom request (AttestationDocument base64-encoded, as JSON
// carries bytes; an SDK takes the decoded bytes), and the ID to open the
// answer's CiphertextForRecipient with.
type KMSRecipientResponse struct {
	ID                     string `json:"id"`
	AttestationDocument    string `json:"attestation_document"`
	KeyEncryptionAlgorithm string `json:"key_encryption_algorithm"`
	Expires                string `json:"expires"` // RFC 3339
}

// KMSDecryptRequest is the body of POST /enclave/kms/decrypt.
type KMSDecryptRequest struct {
	ID                     string `json:"id"`
	CiphertextForRecipient string `json:"ciphertext_for_recipient"` // base64
}

// KMSDecryptResponse is the answer of POST /enclave/kms/decrypt.
type KMSDecryptResponse struct {
	Plaintext string `json:"plaintext"` // base64
}

// kmsRecipients keeps the Recipients the internal server made.
type kmsRecipients struct {
	mu sync.Mutex
	m  map[string]kmsEntry // guarded by mu
}

type kmsEntry struct {
	r       *kms.Recipient
	made    time.Time
	expires time.Time
}

func (k *kmsRecipients) add(r *kms.Recipient, now time.Time) (id string, expires time.Time) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	id = hex.EncodeToString(b[:])
	expires = now.Add(KMSRecipientTTL)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]kmsEntry{}
	}
	for kid, e := range k.m {
		if !now.Before(e.expires) {
			delete(k.m, kid)
		}
	}
	if len(k.m) >= KMSMaxRecipients {
		oldest := ""
		for kid, e := range k.m {
			if oldest == "" || e.made.Before(k.m[oldest].made) {
				oldest = kid
			}
		}
		delete(k.m, oldest)
	}
	k.m[id] = kmsEntry{r: r, made: now, expires: expires}
	return id, expires
}

func (k *kmsRecipients) get(id string, now time.Time) *kms.Recipient {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.m[id]
	if !ok || !now.Before(e.expires) {
		return nil
	}
	return e.r
}

// handleKMSRecipient serves POST /enclave/kms/recipient.
func (s *servers) handleKMSRecipient(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	if s.refuseIfProfiling(w) || !s.takeAttestSlot(w) {
		return
	}
	defer s.releaseAttestSlot()
	rec, err := kms.NewRecipient(r.Context(), s.att)
	if err != nil {
		s.metrics.attestations.WithLabelValues("error").Inc()
		s.log.Warn("kms: could not make a recipient", "err", err)
		http.Error(w, "kms: could not make a recipient: "+err.Error(), http.StatusInternalServerError)
		return
	}
	s.metrics.attestations.WithLabelValues("ok").Inc()
	id, exp := s.kms.add(rec, time.Now())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(KMSRecipientResponse{
		ID:                     id,
		AttestationDocument:    base64.StdEncoding.EncodeToString(rec.AttestationDocument()),
		KeyEncryptionAlgorithm: rec.KeyEncryptionAlgorithm(),
		Expires:                exp.UTC().Format(time.RFC3339),
	})
}

// handleKMSDecrypt serves POST /enclave/kms/decrypt.
func (s *servers) handleKMSDecrypt(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "use POST with a JSON body {\"id\": ..., \"ciphertext_for_recipient\": base64}", http.StatusMethodNotAllowed)
		return
	}
	// base64 of the largest envelope, plus the JSON around it.
	limit := int64(base64.StdEncoding.EncodedLen(kms.MaxEnvelopeSize) + 1024)
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if int64(len(body)) > limit {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	var req KMSDecryptRequest
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	ct, err := base64.StdEncoding.DecodeString(req.CiphertextForRecipient)
	if err != nil {
		http.Error(w, "ciphertext_for_recipient: not base64: "+err.Error(), http.StatusBadRequest)
		return
	}
	rec := s.kms.get(req.ID, time.Now())
	if rec == nil {
		http.Error(w, "kms: no such recipient (unknown id, expired after "+KMSRecipientTTL.String()+", or dropped for a newer one)", http.StatusNotFound)
		return
	}
	plain, err := rec.Decrypt(ct)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, kms.ErrWrongKey) {
			code = http.StatusUnprocessableEntity
		}
		http.Error(w, err.Error(), code)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(KMSDecryptResponse{Plaintext: base64.StdEncoding.EncodeToString(plain)})
}

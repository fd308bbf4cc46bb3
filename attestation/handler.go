package attestation

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
)

// Attestation endpoint, as nitriding serves it.
const (
	// Path is where enclaves serve attestation documents (nitriding's path).
	Path = "/enclave/attestation"
	// NonceSize is the size of the nonce the endpoint takes, in bytes; the
	// query parameter carries it as 2*NonceSize hex digits.
	NonceSize = 20
)

// HandlerConfig holds the dependencies of the attestation handler.
type HandlerConfig struct {
	// Attester produces the documents. Required.
	Attester Attester

	// UserData returns the user data to bind into each document; it is
	// called once per request, so it can follow certificate rotation
	// (return UserData{TLSCertHash: ...}.Marshal()). An error makes the
	// request fail with 500 (and is logged). Default (nil): no user data.
	UserData func() ([]byte, error)

	// PublicKey returns a public key to bind into each document, called
	// once per request. Default (nil): none.
	PublicKey func() ([]byte, error)

	// Logger receives attester failures (level Error). If nil, logs are
	// discarded.
	Logger *slog.Logger
}

// NewHandler returns the handler for GET Path?nonce=<40 hex digits>. It asks
// the Attester for a document carrying the nonce and the user data and
// answers 200 with the document in standard base64 followed by a newline,
// exactly as nitriding does, so nitriding's clients work unchanged.
// A missing or malformed nonce gets 400 with the reason; a method other
// than GET or HEAD gets 405; an attester failure gets 500 and is logged.
// The handler holds no state; it can be mounted on any router (chi:
// r.Get(attestation.Path, h)).
func NewHandler(cfg HandlerConfig) (http.HandlerFunc, error) {
	if cfg.Attester == nil {
		return nil, errors.New("attestation: NewHandler: HandlerConfig.Attester is nil")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "only GET is allowed", http.StatusMethodNotAllowed)
			return
		}
		nonce, err := ParseNonce(r.URL.Query().Get("nonce"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req := Request{Nonce: nonce}
		if cfg.UserData != nil {
			if req.UserData, err = cfg.UserData(); err != nil {
				logger.Error("attestation: user data unavailable", "err", err)
				http.Error(w, "failed to obtain attestation document", http.StatusInternalServerError)
				return
			}
		}
		if cfg.PublicKey != nil {
			if req.PublicKey, err = cfg.PublicKey(); err != nil {
				logger.Error("attestation: public key unavailable", "err", err)
				http.Error(w, "failed to obtain attestation document", http.StatusInternalServerError)
				return
			}
		}
		doc, err := cfg.Attester.Attest(r.Context(), req)
		if err != nil {
			logger.Error("attestation: attester failed", "err", err)
			http.Error(w, "failed to obtain attestation document", http.StatusInternalServerError)
			return
		}
		out := make([]byte, base64.StdEncoding.EncodedLen(len(doc))+1)
		base64.StdEncoding.Encode(out, doc)
		out[len(out)-1] = '\n'
		h.Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(out) // a failed write means the client went away
	}, nil
}

// ParseNonce decodes the nonce query parameter: exactly 2*NonceSize hex
// digits (either case). The error says what is wrong, for a 400 response.
func ParseNonce(s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("missing nonce: want ?nonce=<%d hex digits>", 2*NonceSize)
	}
	if len(s) != 2*NonceSize {
		return nil, fmt.Errorf("bad nonce: %d characters, want %d hex digits", len(s), 2*NonceSize)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("bad nonce: want %d hex digits: %v", 2*NonceSize, err)
	}
	return b, nil
}

package attestation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"time"
)

// DevConfig configures a DevAttester. The zero value works.
type DevConfig struct {
	// ModuleID is the module_id written in every document.
	// Default: "quench-dev-" followed by 16 random hex digits.
	ModuleID string

	// PCRs are the measurements written in every document: indices 0 to 31,
	// each value 48 bytes (SHA-384, like the NSM). Indices 0 to 15 that are
	// not given are filled with 48 zero bytes, as for an enclave started in
	// debug mode. Default: PCR0 to PCR15 all zero.
	PCRs map[uint][]byte

	// Now returns the current time. It stamps every document and, at
	// construction, starts the certificates' validity. Default: time.Now.
	Now func() time.Time

	// Validity is how long the generated certificate chain stays valid,
	// counted from construction (NotBefore is one hour earlier, to absorb
	// clock skew between machines). Default: 365 days.
	Validity time.Duration

	// Logger receives the warning that this attester is insecure (at
	// construction, level Warn) and a note when the root is written to a
	// file. If nil, logs are discarded; pass one.
	Logger *slog.Logger
}

// Defaults of DevConfig.
const (
	DefaultDevValidity = 365 * 24 * time.Hour
	devPCRCount        = 16
	maxPCRIndex        = 31
	sha384Size         = sha512.Size384
)

// DevAttester is a development Attester: it signs documents in exactly the
// NSM format (untagged COSE_Sign1, ES384, same CBOR payload fields, types and
// order) with a certificate chain it generates itself
// (root → intermediate → leaf, ECDSA P-384). nitrite and Verify accept its
// documents when the root from RootPEM or Roots is given as the trusted root,
// and never with the AWS Nitro root.
//
// It provides NO security: anyone can run it and claim any PCRs. Use it for
// simulations and tests, selected explicitly in configuration, never as a
// fallback. It is safe for concurrent use and holds no resources (no Close).
type DevAttester struct {
	moduleID string
	pcrs     pcrMap // read-only after construction
	now      func() time.Time
	key      *ecdsa.PrivateKey
	leafDER  []byte
	cabundle [][]byte // root, intermediate
	root     *x509.Certificate
	rootPEM  []byte
	logger   *slog.Logger
}

var _ Attester = (*DevAttester)(nil)

// NewDevAttester validates cfg, generates a fresh certificate chain and returns
// the attester. It logs a warning that the attester is insecure.
func NewDevAttester(cfg DevConfig) (*DevAttester, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	validity := cfg.Validity
	if validity == 0 {
		validity = DefaultDevValidity
	}
	if validity < 0 {
		return nil, fmt.Errorf("attestation: dev attester: negative Validity %s", validity)
	}
	moduleID := cfg.ModuleID
	if moduleID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("attestation: dev attester: %w", err)
		}
		moduleID = "quench-dev-" + hex.EncodeToString(b[:])
	}
	pcrs := make(pcrMap, devPCRCount)
	for i := uint(0); i < devPCRCount; i++ {
		pcrs[i] = make([]byte, sha384Size)
	}
	for i, v := range cfg.PCRs {
		if i > maxPCRIndex {
			return nil, fmt.Errorf("attestation: dev attester: PCR index %d out of range [0, %d]", i, maxPCRIndex)
		}
		if len(v) != sha384Size {
			return nil, fmt.Errorf("attestation: dev attester: PCR%d is %d bytes, want %d (SHA-384)", i, len(v), sha384Size)
		}
		pcrs[i] = append([]byte(nil), v...)
	}

	d := &DevAttester{moduleID: moduleID, pcrs: pcrs, now: now, logger: logger}
	if err := d.generateChain(now(), validity); err != nil {
		return nil, fmt.Errorf("attestation: dev attester: %w", err)
	}
	logger.Warn("INSECURE development attester in use: attestation documents are signed by a self-generated root, not by AWS Nitro; never use it in production",
		"module_id", moduleID,
		"root_sha256", hex.EncodeToString(sha256Sum(d.root.Raw)))
	return d, nil
}

func (d *DevAttester) generateChain(start time.Time, validity time.Duration) error {
	notBefore := start.Add(-time.Hour)
	notAfter := start.Add(validity)
	name := func(cn string) pkix.Name {
		return pkix.Name{Organization: []string{"quench"}, OrganizationalUnit: []string{"INSECURE development attester"}, CommonName: cn}
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	ca := func(cn string, pathLen int) *x509.Certificate {
		return &x509.Certificate{
			Subject:               name(cn),
			NotBefore:             notBefore,
			NotAfter:              notAfter,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            pathLen,
			MaxPathLenZero:        pathLen == 0,
			SignatureAlgorithm:    x509.ECDSAWithSHA384,
		}
	}
	rootTmpl := ca("quench development root (INSECURE)", 1)
	interTmpl := ca("quench development intermediate (INSECURE)", 0)
	leafTmpl := &x509.Certificate{
		Subject:               name(d.moduleID + ".dev.quench (INSECURE)"),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		SignatureAlgorithm:    x509.ECDSAWithSHA384,
	}
	for _, t := range []*x509.Certificate{rootTmpl, interTmpl, leafTmpl} {
		if t.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
			return err
		}
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return fmt.Errorf("create root certificate: %w", err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return err
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return fmt.Errorf("create intermediate certificate: %w", err)
	}
	inter, err := x509.ParseCertificate(interDER)
	if err != nil {
		return err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, inter, &leafKey.PublicKey, interKey)
	if err != nil {
		return fmt.Errorf("create leaf certificate: %w", err)
	}
	d.key = leafKey
	d.leafDER = leafDER
	d.cabundle = [][]byte{rootDER, interDER}
	d.root = root
	d.rootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
	return nil
}

// Attest returns a signed document carrying req, the configured PCRs and the
// current time. The ctx is only checked on entry: signing does not block.
func (d *DevAttester) Attest(ctx context.Context, req Request) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("attestation: dev attest: %w", err)
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	ms := d.now().UnixMilli()
	if ms < 1 {
		return nil, fmt.Errorf("attestation: dev attest: clock %d ms is before the Unix epoch", ms)
	}
	payload, err := encodePayload(&nsmPayload{
		ModuleID:    d.moduleID,
		Digest:      "SHA384",
		Timestamp:   uint64(ms),
		PCRs:        d.pcrs,
		Certificate: d.leafDER,
		CABundle:    d.cabundle,
		PublicKey:   nilIfEmpty(req.PublicKey),
		UserData:    nilIfEmpty(req.UserData),
		Nonce:       nilIfEmpty(req.Nonce),
	})
	if err != nil {
		return nil, err
	}
	return signCOSE(d.key, payload)
}

// ModuleID returns the module_id written in the documents.
func (d *DevAttester) ModuleID() string { return d.moduleID }

// RootPEM returns the PEM encoding of the development root certificate, for
// verifiers (Options.Roots, `quench verify --roots FILE`).
func (d *DevAttester) RootPEM() []byte { return append([]byte(nil), d.rootPEM...) }

// Roots returns a new pool holding only the development root.
func (d *DevAttester) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(d.root)
	return p
}

// WriteRootPEM writes the development root certificate, PEM-encoded, to path
// (mode 0644, replacing any existing file).
func (d *DevAttester) WriteRootPEM(path string) error {
	if err := os.WriteFile(path, d.rootPEM, 0o644); err != nil {
		return fmt.Errorf("attestation: write development root: %w", err)
	}
	d.logger.Warn("wrote INSECURE development attestation root; trust it only for tests", "path", path)
	return nil
}

package attestation

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// AWSNitroRootPEM is the AWS Nitro Enclaves root certificate (G1), from
// https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip.
// Its SHA-256 fingerprint (of the DER) is AWSNitroRootSHA256, the value AWS
// publishes at https://docs.aws.amazon.com/enclaves/latest/user/verify-root.html.
// It is the same certificate as nitrite.DefaultCARoots (checked in tests).
const AWSNitroRootPEM = `-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
`

// AWSNitroRootSHA256 is the hex SHA-256 fingerprint of AWSNitroRootPEM's DER.
const AWSNitroRootSHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

// awsRoot is parsed once; it is never modified (pools are built per call).
var awsRoot = mustParseRoot(AWSNitroRootPEM)

func mustParseRoot(s string) *x509.Certificate {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		panic("attestation: embedded AWS root is not PEM")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		panic("attestation: embedded AWS root: " + err.Error())
	}
	return c
}

// AWSNitroRoots returns a new pool holding only the AWS Nitro Enclaves root,
// the default Options.Roots.
func AWSNitroRoots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(awsRoot)
	return p
}

// LoadRoots reads PEM certificates from path into a new pool, for
// Options.Roots. It fails if the file holds no certificate.
func LoadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("attestation: load roots: %w", err)
	}
	p := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("attestation: load roots from %s: certificate %d: %w", path, n+1, err)
		}
		p.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("attestation: load roots: no PEM certificate in %s", path)
	}
	return p, nil
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

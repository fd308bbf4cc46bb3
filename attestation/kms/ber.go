package kms

import (
	"errors"
	"fmt"
)

// Bounds on the BER input, which comes from outside the enclave.
const (
	// MaxEnvelopeSize bounds the size of a CiphertextForRecipient that
	// DecryptEnvelopedData accepts. KMS answers are a few hundred bytes to a
	// few KiB (Decrypt returns at most 4096 bytes of plaintext).
	MaxEnvelopeSize = 64 << 10

	// maxDepth bounds the nesting of constructed BER elements. A KMS
	// EnvelopedData nests 10 deep.
	maxDepth = 24
)

// Tag bytes (identifier octets) used by the normaliser.
const (
	tagEOC                 = 0x00
	tagOctetString         = 0x04
	tagConstructedOctetStr = 0x24
	constructedBit         = 0x20
	highTagNumber          = 0x1f
)

var errEOC = errors.New("end-of-contents")

// berToDER rewrites a BER encoding as the DER that encoding/asn1 reads: it
// replaces indefinite lengths with definite, minimal ones and flattens
// constructed OCTET STRINGs (universal tag 4) into primitive ones. It is
// strict: one element, no trailing bytes, single-byte tags only (CMS needs no
// others), at most 4 length octets, indefinite lengths only on constructed
// elements, end-of-contents only where an indefinite length ends, nesting at
// most maxDepth. The output is never longer than the input. Primitive
// contents are copied unchanged; encoding/asn1 then checks them (minimal
// integers and so on). Context-specific constructed strings such as CMS
// encryptedContent ([0] IMPLICIT OCTET STRING) keep their segments, since
// their type is not known here; the CMS decoder joins them.
func berToDER(in []byte) ([]byte, error) {
	if len(in) == 0 {
		return nil, errors.New("empty input")
	}
	if len(in) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%d bytes, more than %d", len(in), MaxEnvelopeSize)
	}
	tag, content, rest, err := berElement(in, 0, 0)
	if errors.Is(err, errEOC) {
		return nil, errors.New("unexpected end-of-contents at offset 0")
	}
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes of trailing data after the outer element", len(rest))
	}
	return appendTLV(make([]byte, 0, len(in)), tag, content), nil
}

// berElement parses one element at the start of b (which begins at offset
// off of the whole input, for error messages) and returns its DER tag and DER
// contents, and the bytes after it. It returns errEOC, unwrapped, when b
// starts with an end-of-contents marker 00 00.
func berElement(b []byte, off, depth int) (tag byte, content, rest []byte, err error) {
	if len(b) < 2 {
		return 0, nil, nil, fmt.Errorf("truncated element header at offset %d", off)
	}
	tag = b[0]
	if tag == tagEOC {
		if b[1] != 0 {
			return 0, nil, nil, fmt.Errorf("malformed end-of-contents at offset %d", off)
		}
		return 0, nil, b[2:], errEOC
	}
	if tag&highTagNumber == highTagNumber {
		return 0, nil, nil, fmt.Errorf("multi-byte tag at offset %d not supported", off)
	}
	constructed := tag&constructedBit != 0
	hdr := 2
	length := -1 // indefinite
	switch l := b[1]; {
	case l < 0x80:
		length = int(l)
	case l == 0x80:
		if !constructed {
			return 0, nil, nil, fmt.Errorf("indefinite length on a primitive element at offset %d", off)
		}
	case l == 0xff:
		return 0, nil, nil, fmt.Errorf("reserved length octet 0xff at offset %d", off)
	default:
		n := int(l & 0x7f)
		if n > 4 {
			return 0, nil, nil, fmt.Errorf("%d length octets at offset %d, at most 4 allowed", n, off)
		}
		if len(b) < 2+n {
			return 0, nil, nil, fmt.Errorf("truncated length at offset %d", off)
		}
		// Up to 2^32-1: counted in uint64, since it would be negative
		// in a 32-bit int, and checked against the input before
		// conversion.
		var l uint64
		for _, c := range b[2 : 2+n] {
			l = l<<8 | uint64(c)
		}
		hdr += n
		if l > uint64(len(b)-hdr) {
			return 0, nil, nil, fmt.Errorf("element at offset %d claims %d bytes, only %d left", off, l, len(b)-hdr)
		}
		length = int(l)
	}
	body := b[hdr:]
	if length > len(body) {
		return 0, nil, nil, fmt.Errorf("element at offset %d claims %d bytes, only %d left", off, length, len(body))
	}
	if !constructed {
		return tag, body[:length], body[length:], nil
	}
	if depth+1 > maxDepth {
		return 0, nil, nil, fmt.Errorf("nesting deeper than %d at offset %d", maxDepth, off)
	}

	// Constructed: normalise the children in turn.
	octets := tag == tagConstructedOctetStr
	var inner []byte
	if length >= 0 {
		inner, rest = body[:length], body[length:]
	} else {
		inner = body
	}
	childOff := off + hdr
	for {
		if length >= 0 && len(inner) == 0 {
			break
		}
		ctag, ccontent, crest, cerr := berElement(inner, childOff, depth+1)
		if errors.Is(cerr, errEOC) {
			if length >= 0 {
				return 0, nil, nil, fmt.Errorf("end-of-contents inside a definite-length element at offset %d", childOff)
			}
			rest = crest
			break
		}
		if cerr != nil {
			if length < 0 && len(inner) < 2 {
				return 0, nil, nil, fmt.Errorf("missing end-of-contents for the element at offset %d", off)
			}
			return 0, nil, nil, cerr
		}
		if octets {
			if ctag != tagOctetString {
				return 0, nil, nil, fmt.Errorf("constructed OCTET STRING at offset %d holds tag 0x%02x, want OCTET STRING segments", off, ctag)
			}
			content = append(content, ccontent...)
		} else {
			content = appendTLV(content, ctag, ccontent)
		}
		childOff += len(inner) - len(crest)
		inner = crest
	}
	if octets {
		return tagOctetString, content, rest, nil
	}
	return tag, content, rest, nil
}

// appendTLV appends a DER element (minimal definite length) to dst.
func appendTLV(dst []byte, tag byte, content []byte) []byte {
	dst = append(dst, tag)
	switch n := len(content); {
	case n < 0x80:
		dst = append(dst, byte(n))
	case n < 0x100:
		dst = append(dst, 0x81, byte(n))
	case n < 0x10000:
		dst = append(dst, 0x82, byte(n>>8), byte(n))
	case n < 0x1000000:
		dst = append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, content...)
}

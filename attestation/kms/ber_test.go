package kms

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

func TestBERToDER(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string // hex
	}{
		{"primitive", "0403616263", "0403616263"},
		{"definite sequence", "30050403616263", "30050403616263"},
		{"indefinite sequence", "308004036162630000", "30050403616263"},
		{"nested indefinite", "3080308002010100000000", "3005300302 0101"},
		{"non-minimal long length", "3081050403616263", "30050403616263"},
		{"constructed octet string", "2480040161040262630000", "0403616263"},
		{"nested constructed octet string", "24802480040161000004026263 0000", "0403616263"},
		{"definite constructed octet string", "240704016104026263", "0403616263"},
		{"context constructed keeps segments", "a080040161040262630000", "a0070401610402 6263"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := berToDER(unhex(t, tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, tc.want); !bytes.Equal(got, want) {
				t.Errorf("got %x, want %x", got, want)
			}
		})
	}
}

func TestBERToDERLongContent(t *testing.T) {
	content := bytes.Repeat([]byte{7}, 300)
	in := append([]byte{0x30, 0x80, 0x04, 0x82, 0x01, 0x2c}, content...)
	in = append(in, 0, 0)
	got, err := berToDER(in)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0x30, 0x82, 0x01, 0x30, 0x04, 0x82, 0x01, 0x2c}, content...)
	if !bytes.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
}

func TestBERToDERRejects(t *testing.T) {
	deep := strings.Repeat("3080", maxDepth+1) + strings.Repeat("0000", maxDepth+1)
	for _, tc := range []struct {
		name, in, err string
	}{
		{"empty", "", "empty"},
		{"trailing", "040161ff", "trailing"},
		{"truncated header", "04", "truncated"},
		{"truncated content", "040561", "claims 5 bytes"},
		{"absurd length", "0484ffffffff61", "claims"},
		// Lengths of 2^31 and more are negative in a 32-bit int: they
		// must not pass for indefinite ones, nor reach a slice bound.
		{"absurd length, constructed", "3084ffffffff0401610000", "claims"},
		{"length 2^31, constructed", "30848000000004016100 00", "claims"},
		{"length 2^31, primitive", "04848000000061", "claims"},
		{"five length octets", "04850000000001", "length octets"},
		{"reserved length", "04ff", "reserved"},
		{"indefinite primitive", "0480610000", "primitive"},
		{"missing EOC", "3080040161", "end-of-contents"},
		{"missing EOC, odd byte", "308004016100", "end-of-contents"},
		{"EOC in definite", "30040000 0000", "definite-length"},
		{"lone EOC", "0000", "end-of-contents"},
		{"malformed EOC", "30800001", "malformed end-of-contents"},
		{"high tag", "1f2100", "multi-byte tag"},
		{"non-octets in constructed octet string", "2480020101 0000", "OCTET STRING segments"},
		{"too deep", deep, "nesting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := berToDER(unhex(t, tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("berToDER(%s) = %x, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
		})
	}
	if _, err := berToDER(make([]byte, MaxEnvelopeSize+1)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized input: %v", err)
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package kms_test

import (
	"context"
	"log"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/kms"
)

// Inside an enclave, fetch a fresh AES-256 data key that only this enclave
// image can read. The AWS SDK call (github.com/aws/aws-sdk-go-v2/service/kms,
// imported as awskms, and its types package) is shown in comments: quench
// does not depend on the SDK.
func ExampleRecipient() {
	ctx := context.Background()
	nsm, err := attestation.NewNSMAttester(attestation.NSMConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer nsm.Close()

	// A new Recipient for this request: a fresh key and a fresh document.
	r, err := kms.NewRecipient(ctx, nsm)
	if err != nil {
		log.Fatal(err)
	}

	//	out, err := client.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{
	//		KeyId:   aws.String(keyARN),
	//		KeySpec: types.DataKeySpecAes256,
	//		Recipient: &types.RecipientInfo{
	//			AttestationDocument:    r.AttestationDocument(),
	//			KeyEncryptionAlgorithm: types.KeyEncryptionMechanism(r.KeyEncryptionAlgorithm()),
	//		},
	//	})
	//	if err != nil { ... }
	//
	// out.Plaintext is empty. out.CiphertextBlob is the data key encrypted
	// under the KMS key, to store and later open with Decrypt (with a
	// Recipient too). out.CiphertextForRecipient is the data key sealed to r.
	var ciphertextForRecipient []byte // out.CiphertextForRecipient
	dataKey, err := r.Decrypt(ciphertextForRecipient)
	if err != nil {
		log.Fatal(err)
	}
	_ = dataKey // an AES-256 key: use it, then drop it
}

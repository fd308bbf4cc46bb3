package keysync_test

import (
	"context"
	"log"
	"net/http"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave/keysync"
)

// A worker or leader of a deployment whose leader is leader.internal: serve
// the external endpoints with TLS on :444 and /enclave/state to the app, then
// start. (Package enclave does this for you with Config.FQDNLeader.)
func ExampleNew() {
	att, err := attestation.NewNSMAttester(attestation.NSMConfig{})
	if err != nil {
		log.Fatal(err)
	}
	s, err := keysync.New(keysync.Config{
		Attester: att,
		Leader:   "leader.internal:444",
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		// A self-signed certificate is fine: peers authenticate each
		// other by attestation documents.
		log.Print(http.ListenAndServeTLS(":444", "cert.pem", "key.pem", s.ExternalHandler()))
	}()
	internal := http.NewServeMux()
	internal.Handle(keysync.StatePath, s.StateHandler())
	go func() { log.Print(http.ListenAndServe("127.0.0.1:8080", internal)) }()
	if err := s.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	<-s.Decided()
	log.Printf("this enclave is the %s", s.Role())
}

// Package keysync synchronises key material between identical enclaves, the
// horizontal scaling of nitriding-daemon (brave/nitriding-daemon,
// doc/key-synchronization.md) with its HTTP paths and roles, and its own
// wire encryption.
//
// # Roles
//
// Every enclave of a deployment runs the same image and names the same
// leader (nitriding's -fqdn-leader). At start each [Syncer] draws a random
// election nonce and asks GET [LeaderPath]?nonce=<40 hex> at
// [Config.Leader]. The one enclave whose own request arrives at itself (it
// sees its own nonce) becomes [RoleLeader]; from then on it answers 410
// Gone, and every other enclave that asks becomes [RoleWorker].
//
// The leader holds the key material ([Keys]): the TLS certificate and key of
// the public server ([Config.Certificate]) and the app's state, opaque bytes
// the app registers with PUT [StatePath] on the internal server (or
// [Syncer.SetState]). Workers send POST [HeartbeatPath] every
// [Config.HeartbeatInterval] with the SHA-256 of the key material they hold
// (salted with random bytes the leader hands out with it: the host reads
// heartbeats, and must not test guesses of the state against them);
// when it differs from the leader's, the leader synchronises them (at most
// [Config.MaxConcurrentSyncs] at once, one per worker: heartbeats are not
// authenticated, so a flood of them must not start unbounded syncs). A worker
// enters the leader's list ([Syncer.Workers]) only through a synchronisation
// that succeeded (a heartbeat with a matching hash from an unlisted worker
// starts one too), and is dropped when not heard from for
// [Config.WorkerTimeout]. New state is also pushed to every listed worker
// at once. Workers install the certificate ([Config.InstallCertificate]) and
// serve the state to their app at GET [StatePath].
//
// # Synchronisation, with mutual attestation
//
//  1. The leader draws a 20-byte nonce Nl and asks the worker
//     GET [SyncPath]?nonce=Nl.
//  2. The worker draws a nonce Nw and an ephemeral X25519 key pair, and
//     answers {"document": base64} with an attestation document whose nonce
//     is Nl, user_data Nw and public_key its X25519 public key.
//  3. The leader verifies the document (certificate chain to [Config.Roots],
//     nonce Nl, age below [Config.MaxDocumentAge], and the PCRs listed in
//     [Config.PCRs] equal to its own: an image only syncs with itself),
//     encrypts the key material to the worker's key (ephemeral X25519, HKDF-
//     SHA256, AES-256-GCM, with both nonces as associated data) and sends
//     POST [SyncPath] {"document", "encrypted_keys"} where its own document
//     has nonce Nw and user_data SHA-256(encrypted_keys).
//  4. The worker verifies that document the same way (nonce Nw, which it
//     then forgets: a replay finds no nonce), checks that it binds the
//     ciphertext, decrypts and installs the keys.
//
// Every body from a peer is size-bounded before it is read, and a worker
// handles at most 4 [SyncPath] requests at once (more answer 503 at once:
// each POST body is read whole before it can be verified, each GET is an
// attestation); malformed or forged documents, foreign PCRs, stale or
// reused nonces answer with an error status and change nothing.
//
// # Serving
//
// [Syncer.ExternalHandler] serves [LeaderPath], [SyncPath] and
// [HeartbeatPath] for other enclaves: serve it with TLS on a listener the
// host publishes only inside the VPC (nitriding's -ext-priv-port, 444).
// Peers do not check each other's TLS certificates; authenticity comes from
// the attestation documents, confidentiality of the keys from the
// encryption. [Syncer.StateHandler] serves [StatePath] for the app on the
// enclave's loopback. Package enclave wires both in (Config.FQDNLeader).
package keysync

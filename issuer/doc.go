// Package issuer signs certificates for transitca.
//
// It holds the key backends — a crypto.Signer backed by a HashiCorp Vault
// Transit key, whose private half never leaves Vault, and a local software
// key that is for development only — and the CA hierarchy built on them: a
// self-signed root whose key lives in Transit, and an issuing intermediate
// certified by that root. The intermediate runs in one of two modes:
//
//   - in-memory: an ECDSA P-256 key generated at start, never written to
//     disk, certified by the root through Transit and renewed before half its
//     life has passed, so that issuing a leaf needs no Vault round trip;
//   - in-Vault: the intermediate key is a Transit key too, and every leaf is
//     signed in Vault.
//
// The root certificate is public: it is stored in Vault's KV store next to
// the key, where every replica finds it. The root key never signs a leaf.
//
// The package knows nothing about gRPC or the issuance log.
package issuer

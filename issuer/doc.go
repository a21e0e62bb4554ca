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
// # Rotation
//
// The root is one Transit key; a root rotation adds a version to it. The
// rotation state (RotationState) says which root version certifies new
// intermediates (active), which one waits in the trust bundle (prepared),
// which older ones the bundle still carries, and which roots and
// intermediates were declared compromised. Every replica and every restart
// reads it from a StateStore: NewVaultState (Vault KV v2, next to the CA
// certificates) in production, NewFileState in dev mode. A rotation moves
// through Authority.PrepareRoot, ActivateRoot (refused until the prepared
// root has been in the bundle for a minimum overlap) and RetireRoot;
// RotateIntermediate and RevokeIntermediate replace the issuing
// intermediate.
//
// # Durability and concurrency of the rotation state
//
// A StateStore MUST make Store a compare-and-set: it writes only if the
// stored revision is still the one given, and it MUST NOT return a new
// revision before the new state is durable (Vault acknowledged the KV
// write; the file and its directory are fsynced). A conflict MUST return an
// error wrapping ErrStateConflict and change nothing.
//
// Every rotation step does its Vault work first, idempotently, then writes
// the state once. A process killed between the two leaves the old state,
// and the same step run again converges: it finds the key version or
// certificate made before the crash and uses it. Vault work left behind by
// a step that is never re-run (a root key version no state names) is
// harmless: nothing trusts or uses it. Another replica adopts a new state
// at its next Reload (Run polls), and a step that lost a compare-and-set
// race reads the state again and re-applies itself.
//
// The package knows nothing about gRPC or the issuance log.
package issuer

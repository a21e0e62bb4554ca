// Package daemon wires transitca's packages into the running certificate
// authority: the key backend (Vault or the dev-only local store), the
// issuance log, the CA hierarchy, authentication, the gRPC services and
// the metrics listener. "ca serve", the benchmarks and the end-to-end tests
// all start the daemon through New and Run, so that what is measured and
// tested is what is shipped.
//
// New does every step that can fail before serving (it opens the log,
// checks it, records the start, issues the serving certificate, binds the
// listeners) and returns an error that names the step. Run serves until its
// context ends, then shuts down gracefully. Close releases what New
// acquired; it MUST be called once New has returned a Daemon, and it does
// not need Vault.
package daemon

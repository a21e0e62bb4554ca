// Package bench holds transitca's benchmarks against its peers: a load
// generator that behaves like a fleet of istio-agents (package loadgen,
// command cmd/loadgen) and a driver (cmd/benchdriver) that measures
// transitca, Istio's own CA server, Vault's PKI engine, Vault Transit and
// the in-process crypto bound side by side in one run and writes
// docs/benchmarks.md. It is its own Go module so that istio.io/istio stays
// out of the daemon's go.mod.
package bench

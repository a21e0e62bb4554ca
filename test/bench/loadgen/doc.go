// Package loadgen drives a certificate authority the way a fleet of
// istio-agents does, and measures it.
//
// A closed loop (ClosedLoop) keeps a fixed number of simulated agents busy,
// each waiting for its answer before it asks again; an open loop (OpenLoop)
// sends at a fixed rate whatever the answers, and charges every request
// from the moment it was due, so that a server that falls behind cannot hide
// the queue it causes (no coordinated omission). Both measure a window after
// a warm-up, count errors by gRPC code, summarize latency (p50, p90, p99,
// p99.9) and, from /proc, the CPU time and peak resident memory of the
// processes they watch.
//
// Requests are made like istio-agent's CA client makes them (Dial,
// CreateCertificate): Istio's own gRPC client options, CSRs from Istio's
// util.GenCSR, the bearer token and clusterid headers.
package loadgen

// Package mesh answers "is the traffic between the mesh's workloads
// encrypted?" per namespace, from two sources that no single one of them
// settles:
//
//   - the cluster's policy (policy.go, read.go): whether each namespace is
//     in the mesh (istio-injection, istio.io/rev, istio.io/dataplane-mode=
//     ambient), its effective PeerAuthentication mode resolved as istiod
//     resolves it (mesh-wide in the root namespace, then namespace-wide,
//     then the oldest workload selector, with port-level overrides; UNSET
//     inherits), and the DestinationRules that disable mTLS to a host;
//   - Istio's own telemetry in Prometheus (traffic.go): per destination
//     namespace and workload, requests and TCP connections by
//     connection_security_policy as the destination's proxy reported them
//     (reporter="destination"), every source→destination pair that carried
//     plaintext, and the stretches of the period with no series (scrapes
//     that failed, retention).
//
// Assess (verdict.go) puts them together with the service accounts that
// hold a live certificate into one verdict per namespace: ENCRYPTED,
// PERMISSIVE-CLEAN, PLAINTEXT SEEN or NOT IN MESH, each with its reason.
// "ca report encryption", the traffic column of "ca report rollout" and the
// CC6.7 section of "ca report evidence" all read it, so that they agree.
//
// The figures MUST be what Prometheus holds, never estimates: counters are
// read sample by sample and their increases added up with resets handled,
// not extrapolated as PromQL's increase() does, so a report's counts equal
// the requests the proxies counted in the period.
package mesh

// Package kube is transitca's side of the Kubernetes API: the client (the
// in-cluster configuration in a pod, a kubeconfig outside), leader
// election over a Lease, and the controller that distributes the trust
// bundle as the istio-ca-root-cert ConfigMap.
//
// Every replica serves certificates; only the elected leader writes to the
// cluster. Leader-only work is a Runner: Elect runs all of them while this
// replica holds the Lease and cancels their context the moment it stops
// holding it, so a replica that lost the Lease MUST NOT write again until
// it wins it back. Runners MUST do every write with the context they were
// given.
//
// The trust bundle controller follows the Kubernetes controller pattern:
// informers on namespaces and on ConfigMaps named istio-ca-root-cert feed a
// rate-limited work queue keyed by namespace, and one reconcile function
// makes a namespace's ConfigMap hold exactly the current bundle. It is safe
// to run twice: when the ConfigMap already matches it writes nothing. It
// never deletes a ConfigMap (its RBAC role has no delete), so a namespace
// that stops matching the selector keeps the last bundle written to it.
package kube

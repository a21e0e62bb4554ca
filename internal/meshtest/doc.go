// Package meshtest gives tests the Istio side of a mesh without running
// Istio: Istio's CRDs, installed from the crd-all.gen.yaml of the pinned
// istio.io/istio module on a kubetest API server, so that real
// PeerAuthentication and DestinationRule objects can be created and read;
// and an exporter that serves Istio's standard metric families with the
// labels Envoy's stats plugin and ztunnel set, for a real Prometheus to
// scrape.
package meshtest

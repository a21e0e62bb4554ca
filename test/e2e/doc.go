// Package e2e holds transitca's end-to-end tests: a real Vault, the real
// ca binary, and Istio's own CA client code from istio.io/istio.
package e2e

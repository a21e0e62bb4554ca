package config

import (
	"fmt"
	"time"
)

// MeshPolicy is kubernetes.mesh_policy: the leader reads the mesh's mTLS
// policy (namespaces, PeerAuthentications, DestinationRules) and exports
// it as the transitca_mesh_* metrics, so that the alert on plaintext into
// a STRICT namespace can join Istio's telemetry with it. It needs read
// access to PeerAuthentications and DestinationRules (deploy/rbac).
type MeshPolicy struct {
	// Enabled exports the metrics (where the daemon has a Kubernetes
	// client, on the leader).
	Enabled bool `yaml:"enabled"`
	// RootNamespace is Istio's meshConfig.rootNamespace: its
	// PeerAuthentications without a selector are mesh-wide.
	RootNamespace string `yaml:"root_namespace"`
	// Domain is the cluster's DNS domain, for DestinationRule hosts.
	Domain string `yaml:"domain"`
	// Resync is how often the policy is read.
	Resync Duration `yaml:"resync"`
}

// defaultMeshPolicy returns the defaults of kubernetes.mesh_policy.
func defaultMeshPolicy() MeshPolicy {
	return MeshPolicy{Enabled: true, RootNamespace: "istio-system", Domain: "cluster.local", Resync: Duration(time.Minute)}
}

func (c *Config) validateMeshPolicy() []error {
	m := c.Kubernetes.MeshPolicy
	if !m.Enabled {
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !isDNSLabel(m.RootNamespace) {
		bad("kubernetes.mesh_policy.root_namespace: %q is not a namespace name (a lowercase DNS label)", m.RootNamespace)
	}
	if !isDNSName(m.Domain) {
		bad("kubernetes.mesh_policy.domain: %q is not a lowercase DNS name", m.Domain)
	}
	if m.Resync < Duration(time.Second) {
		bad("kubernetes.mesh_policy.resync: %v is shorter than a second", m.Resync)
	}
	return errs
}

package config

import (
	"strings"
	"testing"
	"time"
)

func TestMeshPolicyDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Kubernetes.MeshPolicy; !m.Enabled || m.RootNamespace != "istio-system" || m.Domain != "cluster.local" || m.Resync != Duration(time.Minute) {
		t.Fatalf("kubernetes.mesh_policy defaults: %+v", m)
	}
}

func TestMeshPolicyRejects(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"root namespace", "kubernetes:\n  mesh_policy:\n    root_namespace: Istio_System\n", "kubernetes.mesh_policy.root_namespace"},
		{"domain", "kubernetes:\n  mesh_policy:\n    domain: -bad-\n", "kubernetes.mesh_policy.domain"},
		{"resync", "kubernetes:\n  mesh_policy:\n    resync: 10ms\n", "kubernetes.mesh_policy.resync: 10ms is shorter than a second"},
		{"unknown key", "kubernetes:\n  mesh_policy:\n    namespace: x\n", "namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.yaml)
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	// Off, nothing is checked.
	c, err := load(t, "kubernetes:\n  mesh_policy:\n    enabled: false\n    resync: 0s\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("disabled mesh_policy: %v", err)
	}
}

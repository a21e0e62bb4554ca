package config

import (
	"strings"
	"testing"
	"time"
)

func TestIstiodDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	i := c.Kubernetes.Istiod
	if !i.Enabled || i.Namespace != "istio-system" || i.ServiceAccount != "istiod" ||
		i.CertTTL != Duration(24*time.Hour) || len(i.Revisions) != 0 || len(i.ExtraDNSNames) != 0 {
		t.Fatalf("kubernetes.istiod defaults: %+v", i)
	}
	if got := c.IstiodSPIFFEID(); got != "spiffe://cluster.local/ns/istio-system/sa/istiod" {
		t.Fatalf("istiod identity %s", got)
	}
}

func TestIstiodFile(t *testing.T) {
	c, err := load(t, `
trust_domain: mesh.example
kubernetes:
  istiod:
    namespace: mesh-cp
    service_account: istiod
    revisions: [canary, 1-27]
    extra_dns_names: [istiod.mesh.example]
    cert_ttl: 12h
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.IstiodSPIFFEID(); got != "spiffe://mesh.example/ns/mesh-cp/sa/istiod" {
		t.Fatalf("istiod identity %s", got)
	}
	if i := c.Kubernetes.Istiod; len(i.Revisions) != 2 || i.CertTTL != Duration(12*time.Hour) {
		t.Fatalf("kubernetes.istiod: %+v", i)
	}
}

func TestIstiodRejects(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown key", "kubernetes:\n  istiod:\n    secret: x\n", "field secret not found"},
		{"bad namespace", "kubernetes:\n  istiod:\n    namespace: Istio_System\n", "kubernetes.istiod.namespace"},
		{"bad service account", "kubernetes:\n  istiod:\n    service_account: \"\"\n", "kubernetes.istiod.service_account"},
		{"bad revision", "kubernetes:\n  istiod:\n    revisions: [1.27]\n", "kubernetes.istiod.revisions: \"1.27\""},
		{"revision twice", "kubernetes:\n  istiod:\n    revisions: [a, a]\n", "listed twice"},
		{"bad extra name", "kubernetes:\n  istiod:\n    extra_dns_names: [\"*.example\"]\n", "kubernetes.istiod.extra_dns_names"},
		{"ttl too short", "kubernetes:\n  istiod:\n    cert_ttl: 30s\n", "kubernetes.istiod.cert_ttl"},
		{"ttl above the privileged tier", "kubernetes:\n  istiod:\n    cert_ttl: 8d\n", "longer than tiers.privileged.max_ttl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := loadError(t, tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Turned off, the settings are not checked.
	c, err := load(t, "kubernetes:\n  istiod:\n    enabled: false\n    cert_ttl: 30s\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("kubernetes.istiod turned off: %v", err)
	}
}

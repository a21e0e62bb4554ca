package deploy

import (
	"context"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kubetest"
)

func schemaGroupKind(group, kind string) schema.GroupKind {
	return schema.GroupKind{Group: group, Kind: kind}
}

// TestChartAppliesToAPIServer renders the chart for the default values and
// every example values file and server-side applies every object to a real
// API server: each must be accepted as it is.
func TestChartAppliesToAPIServer(t *testing.T) {
	env := kubetest.New(t)
	a := newApplier(t, env)
	a.installMonitoringCRDs(t)
	for name, files := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			ns := env.CreateNamespace(t, "chart-"+strings.ReplaceAll(name, "_", "-")).Name
			r, err := render(t, ns, files...)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			for _, o := range r.objects {
				if err := a.apply(ctx, o); err != nil {
					t.Errorf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}
			t.Logf("applied %d objects: %s", len(r.objects), kinds(r))
		})
	}
}

// TestConfigIsAcceptedByTheDaemon loads the rendered configuration file with
// the daemon's own loader (strict decoding) and validates it, for every set
// of values; and checks that the file names what the pod mounts.
func TestConfigIsAcceptedByTheDaemon(t *testing.T) {
	for name, files := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			const ns = "mesh-ca"
			r, err := render(t, ns, files...)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			var cm corev1.ConfigMap
			fromUnstructured(t, r.find(t, "ConfigMap", ns, "transitca-config"), &cm)
			cfg, err := config.Load(writeTemp(t, "config.yaml", []byte(cm.Data["config.yaml"])))
			if err != nil {
				t.Fatalf("the daemon refuses the rendered configuration: %v\n%s", err, cm.Data["config.yaml"])
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("the rendered configuration does not validate: %v\n%s", err, cm.Data["config.yaml"])
			}
			if want := "transitca." + ns + ".svc"; !slices.Contains(cfg.Server.TLS.DNSNames, want) {
				t.Errorf("server.tls.dns_names = %v, want it to hold the Service's name %s", cfg.Server.TLS.DNSNames, want)
			}

			var sts appsv1.StatefulSet
			fromUnstructured(t, r.find(t, "StatefulSet", ns, "transitca"), &sts)
			pod := sts.Spec.Template.Spec
			c := pod.Containers[0]
			if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/transitca/config.yaml"}) {
				t.Errorf("args = %v", c.Args)
			}
			if m := mountAt(c, "/etc/transitca"); m == nil || volume(pod, m.Name).ConfigMap == nil || volume(pod, m.Name).ConfigMap.Name != cm.Name {
				t.Errorf("the ConfigMap %s is not mounted at /etc/transitca", cm.Name)
			}
			if mountAt(c, cfg.DataDir) == nil {
				t.Errorf("nothing is mounted at data_dir %s", cfg.DataDir)
			}
			if sts.Spec.Replicas != nil && *sts.Spec.Replicas > 1 && len(sts.Spec.VolumeClaimTemplates) == 0 {
				t.Errorf("%d replicas share one log volume: each needs its own claim", *sts.Spec.Replicas)
			}
			if cfg.Vault.Auth.Method == "kubernetes" {
				m := mountAt(c, path.Dir(cfg.Vault.Auth.TokenFile))
				if m == nil {
					t.Fatalf("vault.auth.token_file %s: its directory is not mounted", cfg.Vault.Auth.TokenFile)
				}
				v := volume(pod, m.Name)
				if v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
					t.Fatalf("volume %s is not a projected service-account token", m.Name)
				}
				tok := v.Projected.Sources[0].ServiceAccountToken
				if tok.Path != path.Base(cfg.Vault.Auth.TokenFile) {
					t.Errorf("the token is projected at %s/%s, vault.auth.token_file is %s", m.MountPath, tok.Path, cfg.Vault.Auth.TokenFile)
				}
				if tok.Audience == "" || slices.Contains([]string{"istio-ca"}, tok.Audience) {
					t.Errorf("the Vault token's audience is %q: it needs its own", tok.Audience)
				}
			}
		})
	}
}

// TestPodIsHardened checks the pod's security context, probes and
// downward-API environment in the default rendering.
func TestPodIsHardened(t *testing.T) {
	r, err := render(t, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	var sts appsv1.StatefulSet
	fromUnstructured(t, r.find(t, "StatefulSet", "istio-system", "transitca"), &sts)
	pod := sts.Spec.Template.Spec
	if pod.ServiceAccountName != "transitca" {
		t.Errorf("serviceAccountName = %q", pod.ServiceAccountName)
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("no container securityContext")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Error("runAsNonRoot is not true")
	case sc.RunAsUser == nil || *sc.RunAsUser != 65532:
		t.Error("runAsUser is not 65532")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("readOnlyRootFilesystem is not true")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("allowPrivilegeEscalation is not false")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Error("capabilities do not drop ALL")
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("seccomp profile is not RuntimeDefault")
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe is not an httpGet of /healthz on the metrics port: %+v", name, p)
		}
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] != 15012 || ports["metrics"] != 15014 {
		t.Errorf("container ports = %v, want grpc 15012 and metrics 15014", ports)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("downward API env = %v", env)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("no cpu and memory requests")
	}

	var svc corev1.Service
	fromUnstructured(t, r.find(t, "Service", "istio-system", "transitca"), &svc)
	svcPorts := map[int32]string{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Port] = p.TargetPort.String()
	}
	if svcPorts[443] != "grpc" || svcPorts[15014] != "metrics" {
		t.Errorf("Service ports = %v, want 443 → grpc and 15014 → metrics", svcPorts)
	}
	r.find(t, "PodDisruptionBudget", "istio-system", "transitca")
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		if got := r.ofKind(kind); len(got) != 0 {
			t.Errorf("%s rendered by default; it needs the Prometheus Operator's CRDs", kind)
		}
	}
}

// TestSchemaRefusesInvalidValues checks that values.schema.json refuses
// what the daemon or the chart could not use.
func TestSchemaRefusesInvalidValues(t *testing.T) {
	tests := []struct {
		name, values string
	}{
		{"unknown top-level key", "replica: 3"},
		{"unknown config key", "config: {vault: {adress: https://vault:8200}}"},
		{"unknown nested config key", "config: {kubernetes: {leader_election: {lease: x}}}"},
		{"intermediate mode", "config: {ca: {intermediate_mode: hsm}}"},
		{"root key type", "config: {ca: {root_key_type: ed25519}}"},
		{"zero replicas", "replicas: 0"},
		{"metrics off", `config: {server: {metrics_listen: ""}}`},
		{"duration", "config: {vault: {timeout: ten seconds}}"},
		{"vault auth method", "config: {vault: {auth: {method: ldap}}}"},
		{"unknown policy key", "config: {policy: [{tier: service, namespace: [a]}]}"},
		{"short-lived Vault token", "vaultToken: {expirationSeconds: 60}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(t, "istio-system", writeTemp(t, "values.yaml", []byte(tt.values)))
			if err == nil {
				t.Fatalf("values %q were accepted", tt.values)
			}
			if !strings.Contains(err.Error(), "schema") {
				t.Fatalf("values %q refused, but not by the schema: %v", tt.values, err)
			}
		})
	}
}

func kinds(r rendered) string {
	var ks []string
	for _, o := range r.objects {
		ks = append(ks, o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName())
	}
	return strings.Join(ks, ", ")
}

package deploy

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/transitca/transitca/internal/config"
)

// TestEachPodHasItsOwnShard checks, for every set of values, that the
// configuration names each pod's issuance log after the pod: log.shard is
// auto and POD_NAME comes from the pod's name, so transitca-2 appends to
// the shard transitca/<trust_domain>/transitca-2, with its own witness in
// Vault. With the admin API off loopback (the replicas example), the
// headless Service names every replica's admin port.
func TestEachPodHasItsOwnShard(t *testing.T) {
	for name, files := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			const ns = "mesh-ca"
			r, err := render(t, ns, files...)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			var cm corev1.ConfigMap
			fromUnstructured(t, r.find(t, "ConfigMap", ns, "transitca-config"), &cm)
			var sts appsv1.StatefulSet
			fromUnstructured(t, r.find(t, "StatefulSet", ns, "transitca"), &sts)
			c := sts.Spec.Template.Spec.Containers[0]
			podName := ""
			for _, e := range c.Env {
				if e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
					podName = e.ValueFrom.FieldRef.FieldPath
				}
			}
			if podName != "metadata.name" {
				t.Fatalf("POD_NAME is not the pod's name: %q", podName)
			}
			t.Setenv("POD_NAME", "transitca-2")
			cfg, err := config.Load(writeTemp(t, "config.yaml", []byte(cm.Data["config.yaml"])))
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if cfg.Log.Shard != config.ShardAuto || cfg.LogOrigin() != cfg.LogKeyName()+"/transitca-2" {
				t.Fatalf("log.shard %q, origin %q: want each pod's log named after the pod", cfg.Log.Shard, cfg.LogOrigin())
			}

			if want := "transitca-headless." + ns + ".svc"; !slices.Contains(cfg.Server.TLS.DNSNames, want) {
				t.Errorf("server.tls.dns_names = %v, want %s, the name ca log --addr dns:///… verifies", cfg.Server.TLS.DNSNames, want)
			}
			var headless corev1.Service
			fromUnstructured(t, r.find(t, "Service", ns, "transitca-headless"), &headless)
			admin := slices.IndexFunc(headless.Spec.Ports, func(p corev1.ServicePort) bool { return p.TargetPort.String() == "admin" })
			exposed := !strings.HasPrefix(cfg.Admin.Listen, "127.0.0.1:")
			if exposed != (admin >= 0) {
				t.Fatalf("admin.listen %q, headless Service ports %v", cfg.Admin.Listen, headless.Spec.Ports)
			}
			if exposed && !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
				return p.Name == "admin" && cfg.Admin.Listen == ":"+strconv.Itoa(int(p.ContainerPort))
			}) {
				t.Fatalf("no container port admin for admin.listen %q: %v", cfg.Admin.Listen, c.Ports)
			}
			if want := "ca log query --addr dns:///transitca-headless." + ns + ".svc:15015"; exposed && !strings.Contains(r.notes, want) {
				t.Errorf("the notes do not say how to read every shard (%q):\n%s", want, r.notes)
			}
		})
	}
}

// TestShardValues checks that a fixed shard name, which every pod would
// share, is refused by the schema, and that "" (a log that predates
// shards) is allowed for one replica only.
func TestShardValues(t *testing.T) {
	if _, err := render(t, "istio-system", writeTemp(t, "v.yaml", []byte("config: {log: {shard: transitca-0}}"))); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Fatalf("a fixed shard name: %v, want the schema to refuse it", err)
	}
	_, err := render(t, "istio-system", writeTemp(t, "v.yaml", []byte("replicas: 3\nconfig: {log: {shard: \"\"}}")))
	if err == nil || !strings.Contains(err.Error(), "the same log name") {
		t.Fatalf("three replicas without shards: %v, want a refusal", err)
	}
	r, err := render(t, "istio-system", writeTemp(t, "v.yaml", []byte("config: {log: {shard: \"\"}}")))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	fromUnstructured(t, r.find(t, "ConfigMap", "istio-system", "transitca-config"), &cm)
	cfg, err := config.Load(writeTemp(t, "config.yaml", []byte(cm.Data["config.yaml"])))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Shard != "" {
		t.Fatalf("log.shard %q, want \"\" as given", cfg.Log.Shard)
	}
}

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/operator/pkg/apis"
	"istio.io/istio/operator/pkg/apis/validation"
	"istio.io/istio/operator/pkg/values"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/validation/agent"
	"istio.io/istio/pkg/util/protomarshal"
	"sigs.k8s.io/yaml"

	"github.com/transitca/transitca/internal/config"
)

// The files in deploy/istio, relative to this module.
const (
	istioOperatorFile = "../../deploy/istio/istio-operator.yaml"
	istiodValuesFile  = "../../deploy/istio/values-istiod.yaml"
	transitcaValues   = "../../deploy/charts/transitca/values.yaml"
)

// TestIstioValues checks deploy/istio with the Istio release this module
// builds against: both files decode strictly into the operator's own types
// and pass its validation, they say what transitca needs, a misspelled or
// wrong setting is refused, and the istiod chart still mounts what they rely
// on (istiod-tls, istio-ca-root-cert).
func TestIstioValues(t *testing.T) {
	files := []struct {
		name  string
		path  string
		check func([]byte) (*apis.Values, *meshconfig.MeshConfig, error)
	}{
		{"istioctl IstioOperator", istioOperatorFile, checkIstioOperator},
		{"helm istiod values", istiodValuesFile, checkIstiodValues},
	}
	for _, f := range files {
		t.Run(f.name, func(t *testing.T) {
			b, err := os.ReadFile(f.path)
			if err != nil {
				t.Fatal(err)
			}
			v, mc, err := f.check(b)
			if err != nil {
				t.Fatalf("%s: Istio refuses it: %v", f.path, err)
			}
			if err := transitcaProblems(v, mc); err != nil {
				t.Fatalf("%s: %v", f.path, err)
			}

			// Each case changes one thing in the file; every one must be
			// caught, by Istio's types or by transitcaProblems.
			bad := []struct {
				name, old, new string
			}{
				{"misspelled global key", "caAddress:", "caAdress:"},
				{"misspelled provider key", "pilotCertProvider:", "pilotCertProvidr:"},
				{"misspelled mesh key", "trustDomain:", "trustDomian:"},
				{"misspelled pilot key", "  pilot:\n", "  pilott:\n"},
				{"misspelled env name", "ENABLE_CA_SERVER:", "ENABLE_CA_SEVER:"},
				{"istiod still a CA", `ENABLE_CA_SERVER: "false"`, `ENABLE_CA_SERVER: "true"`},
				{"host not in dns_names", "transitca.istio-system.svc:443", "transitca.istio-system:443"},
				{"port not the Service's", "transitca.istio-system.svc:443", "transitca.istio-system.svc:15012"},
				{"no root cert mount", "pilotCertProvider: istiod", "pilotCertProvider: kubernetes"},
				{"other trust domain", "trustDomain: cluster.local", "trustDomain: example.org"},
			}
			if f.path == istiodValuesFile {
				bad[3] = struct{ name, old, new string }{"misspelled pilot key", "\npilot:\n", "\npilott:\n"}
			} else {
				bad = append(bad, struct{ name, old, new string }{"misspelled spec key", "  values:\n", "  valuse:\n"})
			}
			for _, tc := range bad {
				t.Run(tc.name, func(t *testing.T) {
					if !strings.Contains(string(b), tc.old) {
						t.Fatalf("%s has no %q to change", f.path, tc.old)
					}
					mutated := []byte(strings.Replace(string(b), tc.old, tc.new, 1))
					v, mc, err := f.check(mutated)
					if err == nil {
						err = transitcaProblems(v, mc)
					}
					if err == nil {
						t.Fatalf("%q -> %q accepted", tc.old, tc.new)
					}
					t.Logf("refused: %v", err)
				})
			}
		})
	}

	t.Run("istiod chart mounts what the values rely on", func(t *testing.T) {
		dir := istioModuleDir(t)
		chart := filepath.Join(dir, "manifests/charts/istio-control/istio-discovery")
		deployment := readString(t, filepath.Join(chart, "templates/deployment.yaml"))
		// istiod's serving certificate, written by transitca's leader.
		for _, want := range []string{
			"mountPath: /var/run/secrets/istiod/tls",
			"secretName: istiod-tls\n          optional: true",
		} {
			if !strings.Contains(deployment, want) {
				t.Errorf("istiod chart deployment.yaml no longer has %q: deploy/istio must add the istiod-tls volume itself", want)
			}
		}
		// The roots the agents check transitca with, mounted only with
		// pilotCertProvider istiod.
		injection := readString(t, filepath.Join(chart, "files/injection-template.yaml"))
		for _, want := range []string{
			`{{- if eq .Values.global.pilotCertProvider "istiod" }}`,
			`default "istio-ca-root-cert"`,
			"value: {{ .Values.global.caAddress }}",
		} {
			if !strings.Contains(injection, want) {
				t.Errorf("istiod chart injection-template.yaml no longer has %q", want)
			}
		}
		if _, err := os.Stat(filepath.Join(chart, "values.schema.json")); err == nil {
			t.Errorf("the istiod chart now ships values.schema.json: validate %s against it too", istiodValuesFile)
		}
	})
}

// checkIstioOperator is istioctl's own check of an IstioOperator file, made
// strict where istioctl is lenient: unknown keys are refused everywhere
// (spec, values, meshConfig) and warnings count as failures.
func checkIstioOperator(b []byte) (*apis.Values, *meshconfig.MeshConfig, error) {
	var iop apis.IstioOperator
	if err := yaml.UnmarshalStrict(b, &iop); err != nil {
		return nil, nil, fmt.Errorf("IstioOperator: %w", err)
	}
	if iop.APIVersion != "install.istio.io/v1alpha1" || iop.Kind != "IstioOperator" {
		return nil, nil, fmt.Errorf("not an install.istio.io/v1alpha1 IstioOperator: %s %s", iop.APIVersion, iop.Kind)
	}
	m, err := values.MapFromYaml(b)
	if err != nil {
		return nil, nil, err
	}
	if err := operatorValidation(m); err != nil {
		return nil, nil, err
	}
	v := &apis.Values{}
	// Values.UnmarshalJSON is jsonpb without AllowUnknownFields: strict.
	if err := json.Unmarshal(iop.Spec.Values, v); err != nil {
		return nil, nil, fmt.Errorf("spec.values: %w", err)
	}
	mc, err := strictMeshConfig(string(iop.Spec.MeshConfig))
	if err != nil {
		return nil, nil, fmt.Errorf("spec.meshConfig: %w", err)
	}
	return v, mc, nil
}

// checkIstiodValues checks Helm values for the istiod chart. The chart ships
// no values.schema.json, so they are decoded strictly into the operator's
// Values (the chart's own values tree), then run through the operator's
// validation as an IstioOperator's spec.values.
func checkIstiodValues(b []byte) (*apis.Values, *meshconfig.MeshConfig, error) {
	v := &apis.Values{}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		return nil, nil, fmt.Errorf("values: %w", err)
	}
	hv, err := values.MapFromYaml(b)
	if err != nil {
		return nil, nil, err
	}
	iop := values.Map{
		"apiVersion": "install.istio.io/v1alpha1",
		"kind":       "IstioOperator",
		"spec":       map[string]any{"values": map[string]any(hv)},
	}
	if err := operatorValidation(iop); err != nil {
		return nil, nil, err
	}
	var mcJSON string
	if v.GetMeshConfig() != nil {
		if mcJSON, err = protomarshal.ToJSON(v.GetMeshConfig()); err != nil {
			return nil, nil, err
		}
	}
	mc, err := strictMeshConfig(mcJSON)
	if err != nil {
		return nil, nil, fmt.Errorf("meshConfig: %w", err)
	}
	return v, mc, nil
}

// operatorValidation runs istioctl's validation of an IstioOperator, with
// no cluster to look at. Warnings are failures.
func operatorValidation(iop values.Map) error {
	warnings, errs := validation.ParseAndValidateIstioOperator(iop, nil)
	if len(errs) > 0 {
		return fmt.Errorf("istio operator validation: %w", errs.ToError())
	}
	if len(warnings) > 0 {
		return fmt.Errorf("istio operator validation warns: %w", warnings.ToError())
	}
	return nil
}

// strictMeshConfig decodes mesh config refusing unknown keys (Istio's own
// loader falls back to ignoring them), then validates it, with defaults
// applied, the way istiod does.
func strictMeshConfig(js string) (*meshconfig.MeshConfig, error) {
	if js == "" {
		return nil, errors.New("missing")
	}
	if err := protomarshal.ApplyJSONStrict(js, &meshconfig.MeshConfig{}); err != nil {
		return nil, err
	}
	mc, err := mesh.ApplyMeshConfigDefaults(js)
	if err != nil {
		return nil, err
	}
	warn, err := agent.ValidateMeshConfig(mc)
	if err != nil {
		return nil, err
	}
	if warn != nil {
		return nil, fmt.Errorf("warns: %w", warn)
	}
	return mc, nil
}

// transitcaProblems says what in v and mc does not point the mesh at
// transitca as its defaults and its chart run it, or nil.
func transitcaProblems(v *apis.Values, mc *meshconfig.MeshConfig) error {
	def := config.Default()
	var problems []error

	env := v.GetPilot().GetEnv().GetFields()
	if got := env["ENABLE_CA_SERVER"].GetStringValue(); got != "false" {
		problems = append(problems, fmt.Errorf(`pilot.env.ENABLE_CA_SERVER is %q, want "false": istiod and transitca would both write istio-ca-root-cert`, got))
	}

	addr := v.GetGlobal().GetCaAddress()
	host, port, err := net.SplitHostPort(addr)
	switch {
	case err != nil:
		problems = append(problems, fmt.Errorf("global.caAddress %q: %w", addr, err))
	default:
		if !slices.Contains(def.Server.TLS.DNSNames, host) {
			problems = append(problems, fmt.Errorf("global.caAddress host %q is not in transitca's server.tls.dns_names %v", host, def.Server.TLS.DNSNames))
		}
		if want, err := chartServicePort(); err != nil {
			problems = append(problems, err)
		} else if port != strconv.Itoa(want) {
			problems = append(problems, fmt.Errorf("global.caAddress port %s is not the transitca Service's port %d", port, want))
		}
	}

	if got := v.GetGlobal().GetPilotCertProvider(); got != "istiod" {
		problems = append(problems, fmt.Errorf("global.pilotCertProvider is %q, want istiod: the injector mounts istio-ca-root-cert only then", got))
	}
	if got := mc.GetTrustDomain(); got != def.TrustDomain {
		problems = append(problems, fmt.Errorf("meshConfig.trustDomain is %q, transitca's trust_domain is %q", got, def.TrustDomain))
	}
	// The istiod chart mounts istiod-tls itself; a second volume at the
	// same path would make the pod invalid.
	if len(v.GetPilot().GetVolumes()) > 0 || len(v.GetPilot().GetVolumeMounts()) > 0 {
		problems = append(problems, errors.New("pilot.volumes/volumeMounts set: the istiod chart already mounts istiod-tls at /var/run/secrets/istiod/tls"))
	}
	return errors.Join(problems...)
}

// chartServicePort is service.port in transitca's own chart.
func chartServicePort() (int, error) {
	b, err := os.ReadFile(transitcaValues)
	if err != nil {
		return 0, err
	}
	var vals struct {
		Service struct {
			Port int `json:"port"`
		} `json:"service"`
	}
	if err := yaml.Unmarshal(b, &vals); err != nil {
		return 0, fmt.Errorf("%s: %w", transitcaValues, err)
	}
	return vals.Service.Port, nil
}

// istioModuleDir is where the istio.io/istio module this test builds
// against lies, charts included.
func istioModuleDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
	if err != nil {
		t.Fatalf("go list -m istio.io/istio: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		t.Fatal("istio.io/istio is not in the module cache")
	}
	return dir
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

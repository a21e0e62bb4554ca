package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/transitca/transitca/internal/kubetest"
)

const (
	chartDir    = "../../deploy/charts/transitca"
	rbacDir     = "../../deploy/rbac"
	releaseName = "transitca"
)

// rendered is the chart rendered for one set of values, as "helm template"
// would: every object of the manifest, in order.
type rendered struct {
	objects []*unstructured.Unstructured
	notes   string // NOTES.txt as rendered
}

// find returns the rendered object of the kind, namespace and name, failing
// the test when there is none.
func (r rendered) find(t *testing.T, kind, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range r.objects {
		if o.GetKind() == kind && o.GetNamespace() == namespace && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s/%s among the rendered objects", kind, namespace, name)
	return nil
}

func (r rendered) ofKind(kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range r.objects {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// render renders the chart into namespace with the values files merged in
// order over the chart's defaults, through Helm's install action in
// client-only dry-run mode, for the Kubernetes version of the test API
// server: the values are checked against values.schema.json first, as
// "helm install" checks them.
func render(t *testing.T, namespace string, valuesFiles ...string) (rendered, error) {
	t.Helper()
	return renderWith(t, namespace, func(i *action.Install) { i.KubeVersion = serverVersion(t) }, valuesFiles...)
}

// renderWith is render with the install action as set by configure
// instead: left alone, it renders as "helm template" does, for Helm's
// default capabilities.
func renderWith(t *testing.T, namespace string, configure func(*action.Install), valuesFiles ...string) (rendered, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals := map[string]any{}
	for _, f := range valuesFiles {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			t.Fatalf("values %s: %v", f, err)
		}
		vals = chartutil.MergeTables(v, vals)
	}
	install := action.NewInstall(&action.Configuration{Log: t.Logf})
	install.DryRun = true
	install.ClientOnly = true
	install.ReleaseName = releaseName
	install.Namespace = namespace
	if configure != nil {
		configure(install)
	}
	rel, err := install.Run(chrt, vals)
	if err != nil {
		return rendered{}, err
	}
	r := rendered{notes: rel.Info.Notes}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(rel.Manifest)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("split manifest: %v", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if len(m) == 0 {
			continue
		}
		r.objects = append(r.objects, &unstructured.Unstructured{Object: m})
	}
	return r, nil
}

var (
	kubeVersion     *chartutil.KubeVersion
	kubeVersionOnce sync.Once
)

// serverVersion is the Kubernetes version of the test API server, which
// the chart is rendered for (Helm's client-only default is far older).
func serverVersion(t *testing.T) *chartutil.KubeVersion {
	t.Helper()
	kubeVersionOnce.Do(func() {
		c, err := kubetest.Shared(t).AdminClient()
		if err != nil {
			t.Fatal(err)
		}
		v, err := c.Discovery().ServerVersion()
		if err != nil {
			t.Fatalf("server version: %v", err)
		}
		kubeVersion, err = chartutil.ParseKubeVersion(v.GitVersion)
		if err != nil {
			t.Fatalf("server version %q: %v", v.GitVersion, err)
		}
	})
	if kubeVersion == nil {
		t.Fatal("no server version")
	}
	return kubeVersion
}

// valueSets are the default values and every example values file.
func valueSets(t *testing.T) map[string][]string {
	t.Helper()
	sets := map[string][]string{"defaults": nil}
	examples, err := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(examples) == 0 {
		t.Fatalf("no example values files in %s/examples", chartDir)
	}
	for _, f := range examples {
		sets[strings.TrimSuffix(filepath.Base(f), ".yaml")] = []string{f}
	}
	return sets
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustYAML(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(b)
}

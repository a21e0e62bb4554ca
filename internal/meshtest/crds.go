package meshtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/transitca/transitca/internal/kubetest"
)

// IstioModule is the module whose CRDs the tests install; its version is
// the one test/e2e/go.mod pins (the Istio programs and client code the
// end-to-end tests run), and the daemon's istio.io/client-go is the one
// that version requires.
const IstioModule = "istio.io/istio"

// crdPath is the CRD file inside the module: every Istio CRD, as Istio's
// base chart installs them.
const crdPath = "manifests/charts/base/files/crd-all.gen.yaml"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// repoRoot is the repository's top directory.
func repoRoot() string {
	_, here, _, ok := goruntime.Caller(0)
	if !ok {
		panic("meshtest: cannot locate the repository")
	}
	return filepath.Join(filepath.Dir(here), "..", "..")
}

// IstioVersion returns the istio.io/istio version test/e2e/go.mod pins.
func IstioVersion() (string, error) {
	gomod := filepath.Join(repoRoot(), "test", "e2e", "go.mod")
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == IstioModule {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s does not require %s", gomod, IstioModule)
}

var (
	crdOnce sync.Once
	crdFile string
	crdErr  error
)

// CRDFile returns the path of crd-all.gen.yaml in the pinned istio.io/istio
// module, downloading the module into the module cache ("go mod download",
// which reads the cache first) when it is not there yet.
func CRDFile(tb testing.TB) string {
	tb.Helper()
	crdOnce.Do(func() { crdFile, crdErr = locateCRDs() })
	if crdErr != nil {
		tb.Fatalf("meshtest: Istio's CRDs: %v", crdErr)
	}
	return crdFile
}

func locateCRDs() (string, error) {
	v, err := IstioVersion()
	if err != nil {
		return "", err
	}
	// Run in test/e2e, whose go.sum checks the module. v is the version
	// test/e2e/go.mod pins.
	cmd := exec.Command("go", "mod", "download", "-json", IstioModule+"@"+v) //nolint:gosec // G204: see above
	cmd.Dir = filepath.Join(repoRoot(), "test", "e2e")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w\n%s%s", IstioModule, v, err, out, stderr.String())
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", IstioModule, v, err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", IstioModule, v, m.Error)
	}
	p := filepath.Join(m.Dir, crdPath)
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

var installed sync.Map // server URL → *installation

type installation struct {
	once sync.Once
	err  error
}

// InstallCRDs creates Istio's CRDs (CRDFile) on the server, once per
// server, and waits until the API server serves PeerAuthentication and
// DestinationRule.
func InstallCRDs(tb testing.TB, s *kubetest.Server) {
	tb.Helper()
	v, _ := installed.LoadOrStore(s.URL, &installation{})
	in := v.(*installation)
	file := CRDFile(tb)
	in.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		in.err = installCRDs(ctx, s, file)
	})
	if in.err != nil {
		tb.Fatalf("meshtest: install Istio's CRDs from %s: %v", file, in.err)
	}
}

func installCRDs(ctx context.Context, s *kubetest.Server, file string) error {
	dyn, err := dynamic.NewForConfig(s.AdminConfig())
	if err != nil {
		return err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var obj unstructured.Unstructured
		if err := utilyaml.Unmarshal(doc, &obj.Object); err != nil {
			return err
		}
		if obj.GetKind() != "CustomResourceDefinition" {
			return fmt.Errorf("unexpected %s %s in the CRD file", obj.GetKind(), obj.GetName())
		}
		if _, err := dyn.Resource(crdResource).Create(ctx, &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", obj.GetName(), err)
		}
	}
	// A CRD is served a moment after it is created: list until both kinds
	// the policy is read from answer.
	ic, err := istioclient.NewForConfig(s.AdminConfig())
	if err != nil {
		return err
	}
	for {
		_, err1 := ic.SecurityV1().PeerAuthentications("default").List(ctx, metav1.ListOptions{Limit: 1})
		_, err2 := ic.NetworkingV1().DestinationRules("default").List(ctx, metav1.ListOptions{Limit: 1})
		if err1 == nil && err2 == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not served: %w", errors.Join(err1, err2))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// IstioClient returns an Istio clientset for the server's admin user.
func IstioClient(tb testing.TB, s *kubetest.Server) istioclient.Interface {
	tb.Helper()
	c, err := istioclient.NewForConfig(s.AdminConfig())
	if err != nil {
		tb.Fatalf("meshtest: %v", err)
	}
	return c
}

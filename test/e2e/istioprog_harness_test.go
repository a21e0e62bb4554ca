package e2e

// Istio's own programs as processes: pilot-agent (istio-agent) and
// pilot-discovery (istiod), built from the istio.io/istio this module pins
// (make istio), each run in a temporary directory laid out like its pod's
// filesystem. Istio's well-known paths are relative to the working directory
// (./var/run/secrets/tokens/istio-token, ./var/run/secrets/istio/root-cert.pem,
// ./etc/istio/proxy, ./var/run/secrets/istiod/tls, …), so a process started
// in such a directory finds its mounts there; no root or chroot is needed.
// What a kubelet would put into the mounts, volumeSync puts there: the
// projected token once, and ConfigMaps and Secrets as they change.

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// istioModule is the module both programs are built from.
const istioModule = "istio.io/istio"

// istioPin is the version of istio.io/istio that test/e2e/go.mod pins, the
// one make istio builds the programs from.
func istioPin(t *testing.T) string {
	t.Helper()
	pinOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", istioModule).Output()
		pinVersion, pinErr = strings.TrimSpace(string(out)), err
	})
	if pinErr != nil || pinVersion == "" {
		t.Fatalf("go list -m %s: %v", istioModule, pinErr)
	}
	return pinVersion
}

var (
	pinOnce    sync.Once
	pinVersion string
	pinErr     error
)

// istioBinary returns the path of pilot-agent or pilot-discovery: the file
// named by $TRANSITCA_PILOT_AGENT_BIN or $TRANSITCA_PILOT_DISCOVERY_BIN, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/transitca/<tool>-<pin>, where
// scripts/build-istio.sh puts it. The test fails, saying how to build it,
// when it is missing.
func istioBinary(t *testing.T, tool string) string {
	t.Helper()
	env := map[string]string{"pilot-agent": "TRANSITCA_PILOT_AGENT_BIN", "pilot-discovery": "TRANSITCA_PILOT_DISCOVERY_BIN"}[tool]
	path := os.Getenv(env)
	if path == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		path = filepath.Join(cache, "transitca", tool+"-"+istioPin(t))
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s not found (%v): build it with \"make istio\" (scripts/build-istio.sh builds pilot-agent and pilot-discovery from %s %s, pinned in test/e2e/go.mod)",
			path, err, istioModule, istioPin(t))
	}
	return path
}

// podDir makes an empty directory for one process's pod filesystem. Its
// path is short: the programs' unix sockets live under it, and a socket
// path is limited to 107 bytes.
func podDir(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pod-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's directory is kept for inspection: %s", name, dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// writeFileIn writes data to dir/rel, creating the directories.
func writeFileIn(dir, rel string, data []byte, mode os.FileMode) error {
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, mode)
}

// program is one of Istio's programs running as a process in its pod
// directory. Its output is kept in memory and in <dir>/program.log.
type program struct {
	name string
	dir  string
	bin  string
	args []string
	env  []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	// starts counts the processes started in dir (restarts included).
	starts int
}

// baseEnv is the environment every program starts with: nothing of the test
// process's own, as a container gets nothing of the kubelet's.
func baseEnv(dir string) []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir}
}

// newProgram prepares a program; start runs it.
func newProgram(name, dir, bin string, env []string, args ...string) *program {
	return &program{name: name, dir: dir, bin: bin, env: append(baseEnv(dir), env...), args: args, out: &lockedBuffer{}}
}

// start runs the program in its directory, as a new process after a stop
// (the container restarting, same pod filesystem).
func (p *program) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is running", p.name)
		}
	}
	logFile, err := os.OpenFile(filepath.Join(p.dir, "program.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(p.out, "=== %s: start %d at %s\n", p.name, p.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...) //nolint:gosec // the pinned Istio program the tests run
	cmd.Dir = p.dir
	cmd.Env = p.env
	w := io.MultiWriter(p.out, logFile)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// running reports whether the process runs.
func (p *program) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// pid is the process's ID, or 0 before the first start.
func (p *program) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// stop sends SIGTERM, as the kubelet does, waits up to grace for the
// process to exit, then kills it. It returns how the process ended.
func (p *program) stop(grace time.Duration) string {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return "never started"
	}
	select {
	case <-done:
		return "exited before the stop: " + cmd.ProcessState.String()
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return cmd.ProcessState.String()
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Sprintf("killed: SIGTERM not obeyed within %v", grace)
	}
}

// Logs returns everything the program printed, every start included.
func (p *program) Logs() string { return p.out.String() }

// stopAll stops the programs at once (a pod being deleted) and returns how
// each ended.
func stopAll(grace time.Duration, ps ...*program) map[string]string {
	var mu sync.Mutex
	ended := map[string]string{}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			how := p.stop(grace)
			mu.Lock()
			ended[p.name] = how
			mu.Unlock()
		})
	}
	wg.Wait()
	return ended
}

// scrape GETs a Prometheus text endpoint and returns its samples, by the
// series as printed ("name{labels}"), summed when printed twice.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		samples[line[:i]] += v
	}
	return samples, sc.Err()
}

// metric sums the samples of one metric name whose labels contain every
// one of the label pairs (`name="value"`).
func metric(samples map[string]float64, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	for series, v := range samples {
		n, rest, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if ok {
			sum += v
			found = true
		}
	}
	return sum, found
}

// volumeSync is the part of a kubelet that keeps a pod's ConfigMap and
// Secret volumes up to date: it watches each object and rewrites the
// volume's files the way the kubelet's atomic writer does, the new files in
// a fresh timestamped directory, the ..data symlink swapped to it in one
// rename, each key a symlink to ..data/<key>. It writes as soon as the API
// server reports a change (a real kubelet takes up to its sync period,
// about a minute, plus its cache's TTL).
type volumeSync struct {
	client kubernetes.Interface
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	objects map[string]*watchedObject
}

type watchedObject struct {
	data   map[string][]byte // nil until the object is seen
	rv     string
	dirs   []string
	writes int
	err    error
}

func newVolumeSync(t *testing.T, client kubernetes.Interface) *volumeSync {
	ctx, cancel := context.WithCancel(context.Background())
	v := &volumeSync{client: client, ctx: ctx, cancel: cancel, objects: map[string]*watchedObject{}}
	t.Cleanup(cancel)
	return v
}

// configMap mounts ConfigMap ns/name at dir (a directory of the pod
// filesystem).
func (v *volumeSync) configMap(ns, name, dir string) { v.mount("configmap", ns, name, dir) }

// secret mounts Secret ns/name at dir.
func (v *volumeSync) secret(ns, name, dir string) { v.mount("secret", ns, name, dir) }

func (v *volumeSync) mount(kind, ns, name, dir string) {
	key := kind + "/" + ns + "/" + name
	v.mu.Lock()
	o, ok := v.objects[key]
	if !ok {
		o = &watchedObject{}
		v.objects[key] = o
		v.watch(kind, ns, name, o)
	}
	o.dirs = append(o.dirs, dir)
	if o.data != nil {
		if err := writeVolume(dir, o.data); err != nil && o.err == nil {
			o.err = err
		}
	}
	v.mu.Unlock()
}

func (v *volumeSync) watch(kind, ns, name string, o *watchedObject) {
	factory := informers.NewSharedInformerFactoryWithOptions(v.client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
	var inf cache.SharedIndexInformer
	if kind == "configmap" {
		inf = factory.Core().V1().ConfigMaps().Informer()
	} else {
		inf = factory.Core().V1().Secrets().Informer()
	}
	update := func(obj any) {
		var data map[string][]byte
		var rv string
		switch x := obj.(type) {
		case *corev1.ConfigMap:
			data = map[string][]byte{}
			for k, s := range x.Data {
				data[k] = []byte(s)
			}
			maps.Copy(data, x.BinaryData)
			rv = x.ResourceVersion
		case *corev1.Secret:
			data, rv = x.Data, x.ResourceVersion
		default:
			return
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		if rv == o.rv {
			return
		}
		o.data, o.rv = data, rv
		o.writes++
		for _, dir := range o.dirs {
			if err := writeVolume(dir, data); err != nil && o.err == nil {
				o.err = err
			}
		}
	}
	// An optional volume keeps its last content when the object goes; the
	// tests never delete one that is mounted.
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: update, UpdateFunc: func(_, obj any) { update(obj) }})
	factory.Start(v.ctx.Done())
}

// written says how often the object's volumes were written, and the first
// write error, if any.
func (v *volumeSync) written(kind, ns, name string) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	o := v.objects[kind+"/"+ns+"/"+name]
	if o == nil {
		return 0, nil
	}
	return o.writes, o.err
}

// writeVolume replaces dir's content with data as the kubelet's atomic
// writer does.
func writeVolume(dir string, data map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return err
	}
	for k, b := range data {
		if err := os.WriteFile(filepath.Join(ts, k), b, 0o644); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case n == "..data" || filepath.Join(dir, n) == ts:
		case strings.HasPrefix(n, ".."):
			_ = os.RemoveAll(filepath.Join(dir, n))
		case data[n] == nil:
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	for k := range data {
		link := filepath.Join(dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			return err
		}
	}
	return nil
}

// freePort is a free loopback port, as freeAddr.
func freePort(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}

// readPEMFile parses the certificates of a PEM file.
func readPEMFile(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseChainElems([]string{string(b)})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// eventually polls check every interval until it returns nil or limit
// passes, and returns the last error.
func eventually(limit, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", limit, err)
		}
		time.Sleep(interval)
	}
}

// certsOf turns certificates into a set of their raw bytes, for comparing
// bundles.
func certsOf(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, string(c.Raw))
	}
	slices.Sort(out)
	return out
}

var errNotYet = errors.New("not yet")

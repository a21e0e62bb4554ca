package kubetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Version is the Kubernetes release of the API server the tests run against;
// it must match the k8s.io/kubernetes pin in test/kube/kube-apiserver/go.mod.
const Version = "v1.37.2"

// EtcdVersion is the etcd release the API server stores in; it must match
// the go.etcd.io/etcd/server/v3 pin in test/kube/etcd/go.mod.
const EtcdVersion = "v3.7.3"

// Issuer is the service account token issuer (the iss claim) of every
// server, as in a cluster whose DNS domain is cluster.local.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// startLimit bounds how long Start waits for etcd and the API server.
const startLimit = 90 * time.Second

// APIServerBinary returns the path of the kube-apiserver binary the tests
// use.
func APIServerBinary() string {
	return binary("TRANSITCA_KUBE_APISERVER_BIN", "kube-apiserver-"+Version)
}

// EtcdBinary returns the path of the etcd binary the tests use.
func EtcdBinary() string {
	return binary("TRANSITCA_ETCD_BIN", "etcd-"+EtcdVersion)
}

func binary(env, name string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "transitca", name)
}

// Server is a running kube-apiserver and its etcd.
type Server struct {
	// URL is the API server's address, https://127.0.0.1:<port>.
	URL string
	// CAPEM is the PEM certificate of the CA that signed the API server's
	// serving certificate (for 127.0.0.1, localhost and
	// kubernetes.default.svc).
	CAPEM []byte
	// AdminToken is a bearer token of user "admin" in group system:masters,
	// which RBAC allows everything.
	AdminToken string
	// StartDuration is how long Start took, from launching etcd until the
	// API server's /readyz answered ok.
	StartDuration time.Duration

	dir       string // data, keys and certificates; removed by Stop
	etcd, api *process
	stopOnce  sync.Once
}

// Start starts etcd and a kube-apiserver on free loopback ports and waits
// until the API server is ready. The caller must Stop it.
func Start() (*Server, error) {
	began := time.Now()
	apiBin, etcdBin := APIServerBinary(), EtcdBinary()
	for _, bin := range []string{apiBin, etcdBin} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("%s not found (%w): build it with \"make kube\" (scripts/build-kube.sh builds kube-apiserver from k8s.io/kubernetes %s and etcd from go.etcd.io/etcd/server/v3 %s, pinned in test/kube)", bin, err, Version, EtcdVersion)
		}
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, AdminToken: "admin-" + randHex(16)}
	if err := s.start(apiBin, etcdBin); err != nil {
		s.Stop()
		return nil, err
	}
	s.StartDuration = time.Since(began)
	return s, nil
}

func (s *Server) start(apiBin, etcdBin string) error {
	files, err := writePKI(s.dir, s.AdminToken)
	if err != nil {
		return fmt.Errorf("write keys and certificates: %w", err)
	}
	s.CAPEM = files.caPEM

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	s.etcd, err = startProcess(etcdBin,
		"--name", "kubetest",
		"--data-dir", filepath.Join(s.dir, "etcd"),
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "kubetest="+peerURL,
		// Nothing here outlives the test process: durability buys nothing.
		"--unsafe-no-fsync",
		"--log-level", "warn",
	)
	if err != nil {
		return err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitOK(s.etcd, plain, clientURL+"/health", nil, startLimit); err != nil {
		return fmt.Errorf("etcd at %s did not become healthy: %w\netcd output:\n%s", clientURL, err, s.etcd.Logs())
	}

	s.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	s.api, err = startProcess(apiBin,
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		// Without a kubelet there are no endpoints to reconcile; with the
		// default reconciler the server refuses a loopback advertise address.
		"--advertise-address", "127.0.0.1",
		"--endpoint-reconciler-type", "none",
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--tls-cert-file", files.servingCert,
		"--tls-private-key-file", files.servingKey,
		"--authorization-mode", "RBAC",
		"--token-auth-file", files.tokens,
		"--service-account-issuer", Issuer,
		"--service-account-key-file", files.saKey,
		"--service-account-signing-key-file", files.saKey,
		"--api-audiences", Issuer,
		"--profiling=false",
		"--v", "0",
	)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CAPEM)
	secure := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	if err := waitOK(s.api, secure, s.URL+"/readyz", http.Header{"Authorization": {"Bearer " + s.AdminToken}}, startLimit); err != nil {
		return fmt.Errorf("kube-apiserver at %s did not become ready: %w\nkube-apiserver output:\n%s\netcd output:\n%s", s.URL, err, s.api.Logs(), s.etcd.Logs())
	}
	return nil
}

// Logs returns what the API server and etcd printed so far.
func (s *Server) Logs() string {
	var b bytes.Buffer
	if s.api != nil {
		fmt.Fprintf(&b, "kube-apiserver:\n%s", s.api.Logs())
	}
	if s.etcd != nil {
		fmt.Fprintf(&b, "etcd:\n%s", s.etcd.Logs())
	}
	return b.String()
}

// Stop kills the API server and etcd, waits for them to exit and removes
// their data.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.api.kill()
		s.etcd.kill()
		_ = os.RemoveAll(s.dir)
	})
}

// Config returns a client configuration that authenticates with the bearer
// token and trusts the server's CA.
func (s *Server) Config(token string) *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CAPEM},
		// Tests create objects quickly; client-side throttling would only
		// slow them down.
		QPS:   -1,
		Burst: -1,
	}
}

// AdminConfig returns a client configuration for the admin user.
func (s *Server) AdminConfig() *rest.Config {
	return s.Config(s.AdminToken)
}

// AdminClient returns a clientset for the admin user.
func (s *Server) AdminClient() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(s.AdminConfig())
}

// Kubeconfig returns a kubeconfig file's content whose one context reaches
// the server with the bearer token, in the given default namespace (empty:
// "default").
func (s *Server) Kubeconfig(token, namespace string) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthorityData: s.CAPEM}
	cfg.AuthInfos["kubetest"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "kubetest", Namespace: namespace}
	cfg.CurrentContext = "kubetest"
	return clientcmd.Write(*cfg)
}

// WriteKubeconfig writes Kubeconfig(token, namespace) to path, readable only
// by its owner.
func (s *Server) WriteKubeconfig(path, token, namespace string) error {
	data, err := s.Kubeconfig(token, namespace)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// process is a child process whose output is kept in memory. It runs in its
// own process group and is killed when the test process dies.
type process struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func startProcess(bin string, args ...string) (*process, error) {
	p := &process{name: filepath.Base(bin), done: make(chan struct{})}
	// bin is the pinned kube-apiserver or etcd the tests start
	// (APIServerBinary, EtcdBinary: the developer's own cache or
	// environment); args are built in this package.
	cmd := exec.Command(bin, args...) //nolint:gosec // G204: see above
	cmd.Stdout, cmd.Stderr = p, p
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Logs returns what the process printed so far.
func (p *process) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) kill() {
	if p == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// waitOK polls url until it answers 200, p exits, or limit passes.
func waitOK(p *process, hc *http.Client, url string, header http.Header, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.cmd.ProcessState)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if header != nil {
			req.Header = header
		}
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", resp.Status, body)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", limit, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct free loopback ports: each listener stays open
// until all are chosen. Another process may still take one before the server
// binds it, as with any free-port probe.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

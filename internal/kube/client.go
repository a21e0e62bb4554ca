package kube

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// serviceAccountDir is where a pod's service account credentials and
// namespace are mounted.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// DefaultNamespace is the namespace assumed for the daemon when neither
// the pod nor the kubeconfig names one.
const DefaultNamespace = "istio-system"

// InCluster reports whether the process runs in a pod: the API server's
// service environment is set and a service account is mounted.
func InCluster() bool {
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" || os.Getenv("KUBERNETES_SERVICE_PORT") == "" {
		return false
	}
	_, err := os.Stat(serviceAccountDir + "/token")
	return err == nil
}

// Client is a connection to the API server and the namespace the daemon
// lives in.
type Client struct {
	Config    *rest.Config
	Clientset kubernetes.Interface
	// Namespace is the daemon's own: the pod's, or the kubeconfig
	// context's, or $POD_NAMESPACE, or DefaultNamespace.
	Namespace string
}

// NewClient connects with the kubeconfig file when one is given, else with
// the in-cluster configuration.
func NewClient(kubeconfig, userAgent string) (*Client, error) {
	var (
		cfg *rest.Config
		ns  string
		err error
	)
	if kubeconfig != "" {
		// One file, or a list of them as in $KUBECONFIG.
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
		if list := filepath.SplitList(kubeconfig); len(list) > 1 {
			rules = &clientcmd.ClientConfigLoadingRules{Precedence: list}
		}
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
		if cfg, err = cc.ClientConfig(); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		// A context without a namespace reads as "default": not a choice.
		if n, explicit, err := cc.Namespace(); err == nil && explicit {
			ns = n
		}
	} else {
		if cfg, err = rest.InClusterConfig(); err != nil {
			if errors.Is(err, rest.ErrNotInCluster) {
				return nil, errors.New("not running in a pod and no kubeconfig given (kubernetes.kubeconfig, ca serve --kubeconfig or $KUBECONFIG)")
			}
			return nil, fmt.Errorf("in-cluster configuration: %w", err)
		}
		if b, err := os.ReadFile(serviceAccountDir + "/namespace"); err == nil {
			ns = strings.TrimSpace(string(b))
		}
	}
	if ns == "" {
		ns = os.Getenv("POD_NAMESPACE")
	}
	if ns == "" {
		ns = DefaultNamespace
	}
	cfg = rest.CopyConfig(cfg)
	if userAgent != "" {
		cfg.UserAgent = userAgent
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Client{Config: cfg, Clientset: cs, Namespace: ns}, nil
}

// Host is the API server the client talks to.
func (c *Client) Host() string {
	return c.Config.Host
}

package daemon

import (
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/internal/kube"
)

// istiodEvery is how often istiod's Secret is compared with what it should
// be when no event says so; it bounds how late a new root or intermediate
// reaches istiod.
var istiodEvery = kube.DefaultIstiodCheckEvery

// istiodRunner returns the writer that keeps istiod's serving certificate
// in the Secret istiod-tls (kubernetes.istiod), or nil when
// kubernetes.istiod.enabled is false. It needs the certificate service and
// the authority, so call it after New. Run its Run on the leader only,
// with a context that ends when leadership does; it returns then.
//
// client needs get, list, watch, update and delete on the Secret
// istiod-tls, and create on Secrets, in kubernetes.istiod.namespace.
func (d *Daemon) istiodRunner(client kubernetes.Interface) (*kube.IstiodCert, error) {
	i := d.cfg.Kubernetes.Istiod
	if !i.Enabled {
		return nil, nil
	}
	w, err := kube.NewIstiodCert(kube.IstiodCertOptions{
		Client:     client,
		Issuer:     d.svc,
		Hierarchy:  d.authority,
		Namespace:  i.Namespace,
		SPIFFEID:   d.cfg.IstiodSPIFFEID(),
		DNSNames:   kube.IstiodDNSNames(i.Namespace, i.Revisions, i.ExtraDNSNames),
		TTL:        time.Duration(i.CertTTL),
		CheckEvery: istiodEvery,
		Logger:     d.log,
	})
	if err != nil {
		return nil, fmt.Errorf("istiod certificate: %w", err)
	}
	return w, nil
}

package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"time"

	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/loop"
	"github.com/transitca/transitca/issuer"
)

// writeRoots writes the trust bundle as PEM.
func writeRoots(path string, roots []*x509.Certificate) error {
	return atomicfile.Write(path, rootsPEM(roots), 0o644)
}

// rootsPEM is the trust bundle as concatenated PEM: the content of
// root-cert.pem and of the istio-ca-root-cert ConfigMaps.
func rootsPEM(roots []*x509.Certificate) []byte {
	var data []byte
	for _, r := range roots {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return data
}

// watchHierarchy calls refresh when the trust bundle or the issuing
// intermediate changes other than through a step taken here: another
// replica took it and this one adopted it (Authority.Reload), or the
// intermediate was renewed. refresh brings the root bundle file, the
// cluster writers and the serving certificate up to date; it is called
// again at the next tick when it fails.
func watchHierarchy(ctx context.Context, a *issuer.Authority, every time.Duration, refresh func(context.Context) error) {
	last := hierarchyKey(a)
	loop.Every(ctx, every, func(ctx context.Context) {
		if k := hierarchyKey(a); k != last && refresh(ctx) == nil {
			last = k
		}
	})
}

// hierarchyKey changes when the trust bundle or the issuing intermediate
// does.
func hierarchyKey(a *issuer.Authority) string {
	return bundleKey(a.Roots()) + "/" + a.Intermediate().Fingerprint
}

func bundleKey(roots []*x509.Certificate) string {
	var k string
	for _, r := range roots {
		k += issuer.Fingerprint(r)
	}
	return k
}

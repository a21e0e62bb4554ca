package daemon

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"time"

	"github.com/transitca/transitca/internal/atomicfile"
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

// watchRoots rewrites the root bundle file when the trust bundle changes
// (for instance when another replica rotated the root), then calls
// changed.
func watchRoots(ctx context.Context, a *issuer.Authority, path string, every time.Duration, log *slog.Logger, changed func()) {
	last := bundleKey(a.Roots())
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		roots := a.Roots()
		if k := bundleKey(roots); k != last {
			if err := writeRoots(path, roots); err != nil {
				log.ErrorContext(ctx, "write root bundle", slog.Any("error", err))
				continue
			}
			last = k
			changed()
		}
	}
}

func bundleKey(roots []*x509.Certificate) string {
	var k string
	for _, r := range roots {
		k += issuer.Fingerprint(r)
	}
	return k
}

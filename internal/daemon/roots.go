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
	var data []byte
	for _, r := range roots {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return atomicfile.Write(path, data, 0o644)
}

// watchRoots rewrites the root bundle file when the trust bundle changes.
func watchRoots(ctx context.Context, a *issuer.Authority, path string, every time.Duration, log *slog.Logger) {
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

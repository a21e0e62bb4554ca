package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/issuer"
)

// Backend is where the CA's keys and certificates live.
type Backend struct {
	Keys  issuer.Keys
	Certs issuer.Certs
	// Session is the logged-in Vault client; nil in dev mode.
	Session *issuer.VaultSession
	// Transit is the Transit client; nil in dev mode.
	Transit *issuer.Transit
}

// OpenBackend connects to Vault (or, in dev mode, opens the local dev-only
// key store in the data directory).
func OpenBackend(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Backend, error) {
	timeout := time.Duration(cfg.Vault.Timeout)
	if cfg.Dev {
		dir := filepath.Join(cfg.DataDir, "dev-keys")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("dev key directory: %w", err)
		}
		log.WarnContext(ctx, "DEV-ONLY mode: keys are local software keys, not in Vault; never use this in production", slog.String("dir", dir))
		return &Backend{Keys: issuer.NewLocalKeys(dir), Certs: issuer.NewLocalCerts(dir)}, nil
	}
	sess, err := issuer.NewVaultSession(ctx, cfg.Vault.Address, cfg.VaultAuth(), log)
	if err != nil {
		return nil, err
	}
	tr := issuer.NewTransit(sess.Client, cfg.Vault.TransitMount, timeout)
	return &Backend{
		Keys:    issuer.VaultKeys{Transit: tr},
		Certs:   issuer.NewVaultCerts(sess.Client, cfg.Vault.KVMount, cfg.Vault.KVPrefix, timeout),
		Session: sess,
		Transit: tr,
	}, nil
}

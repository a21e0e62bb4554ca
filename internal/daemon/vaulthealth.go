package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/transitca/transitca/internal/loop"
	"github.com/transitca/transitca/issuer"
)

// MetricVaultUp is 1 while Vault answers, is unsealed and accepts the
// daemon's token, 0 otherwise (checked every vault.check_interval).
const MetricVaultUp = "transitca_vault_up"

// registerVaultMetrics exports MetricVaultUp; it reads 1 until a check
// fails.
func (d *Daemon) registerVaultMetrics() {
	d.vaultUp = prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricVaultUp,
		Help: "1 while Vault answers, is unsealed and accepts the daemon's token; 0 otherwise."})
	d.vaultUp.Set(1)
	d.reg.MustRegister(d.vaultUp)
}

// watchVault checks Vault every vault.check_interval. While it cannot be used
// the daemon reports itself degraded: MetricVaultUp is 0 and /healthz
// (still 200: the daemon may go on issuing) says what it can and cannot do.
// A token Vault refuses makes the session log in again (issuer.VaultSession
// Check).
func (d *Daemon) watchVault(ctx context.Context) {
	s := d.backend.Session
	check := func(ctx context.Context) {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.Vault.Timeout.Std())
		err := s.Check(cctx)
		cancel()
		if ctx.Err() == nil {
			d.vaultChecked(ctx, err)
		}
	}
	check(ctx)
	loop.Every(ctx, d.cfg.Vault.CheckInterval.Std(), check)
}

// vaultChecked records the outcome of a Vault check.
func (d *Daemon) vaultChecked(ctx context.Context, err error) {
	was := d.vaultDown.Load()
	if err == nil {
		d.vaultUp.Set(1)
		if was != nil {
			d.vaultDown.Store(nil)
			d.log.InfoContext(ctx, "vault is usable again; no longer degraded")
		}
		return
	}
	d.vaultUp.Set(0)
	why := "degraded: vault cannot be used (" + err.Error() + "); "
	if d.authority.Mode() == issuer.ModeMemory {
		why += fmt.Sprintf("issuing from the in-memory intermediate, valid until %s; it is renewed once vault is back; checkpoints wait",
			d.authority.Intermediate().Cert.NotAfter.UTC().Format(time.RFC3339))
	} else {
		why += "every leaf needs a vault signature: requests fail with Unavailable until vault is back"
	}
	d.vaultDown.Store(&why)
	if was == nil {
		d.log.WarnContext(ctx, "DEGRADED: "+why, slog.Any("error", err))
	}
}

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/atomicfile"
	"github.com/transitca/transitca/internal/config"
	"github.com/transitca/transitca/internal/kube"
	"github.com/transitca/transitca/internal/loop"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// Options are what the daemon needs beyond its configuration.
type Options struct {
	// Logger receives the daemon's logs. Default: slog.Default().
	Logger *slog.Logger
	// Version is recorded in the log's start entry.
	Version string
	// NoSync turns fsync off in the issuance log. It voids the durability
	// promise and exists for diagnosis in benchmarks only.
	NoSync bool
}

// logCloseTimeout is the part of server.shutdown_timeout kept for
// closing the issuance log: a third, at most 5s (signing its final
// checkpoint may need Vault; without an answer it is written at the next
// start).
func logCloseTimeout(cfg *config.Config) time.Duration {
	return min(cfg.Server.ShutdownTimeout.Std()/3, 5*time.Second)
}

// Timings of the background work. Variables so that tests can shorten
// them.
var (
	// hierarchyEvery is how often the trust bundle and the issuing
	// intermediate are checked for a change another replica made (which
	// the authority adopts every rotation.state_poll_interval).
	hierarchyEvery = time.Second
	// servingEvery is how often the serving certificate is checked for
	// renewal.
	servingEvery = time.Minute
	// logRecoverInterval is the first wait before a failed issuance log
	// tries to take appends again (store.Options.RecoverInterval).
	logRecoverInterval = 2 * time.Second
)

// Daemon is a wired certificate authority: listeners bound, log open,
// serving certificate issued. Run serves; Close releases.
type Daemon struct {
	cfg  *config.Config
	log  *slog.Logger
	opts Options

	backend   *Backend
	authority *issuer.Authority
	ilog      *store.Log
	svc       *ca.Service
	vkey      string
	recorder  ca.LogRecorder
	reg       *prometheus.Registry
	serving   atomic.Pointer[ca.ServingCert]
	devHint   string
	rootFile  string
	kube      *kubeSide        // nil when the Kubernetes features are off
	kubeAPI   *kube.Client     // nil when the Kubernetes features are off
	pods      []*kube.PodIndex // ambient mode's pod indexes, one per cluster

	grpcSrv    *grpc.Server
	health     *health.Server
	adminSrv   *grpc.Server
	adminSvc   *ca.AdminService
	metricsSrv *http.Server
	lis        net.Listener
	adminLis   net.Listener
	metricsLis net.Listener

	ready     atomic.Bool
	notReady  atomic.Pointer[string] // why the daemon stopped serving, if it did
	vaultDown atomic.Pointer[string] // why the daemon is degraded, if Vault cannot be used
	vaultUp   prometheus.Gauge       // nil without Vault

	// logAtOpen is the log as openLog found it, for the start entry.
	logAtOpen ca.LogAtStart
	// started is set once the start is recorded: Close then records the
	// stop.
	started bool

	closeOnce sync.Once
	closeErr  error
}

// New wires the daemon from cfg: it opens the key backend (in dev mode it
// first creates the dev CA), the issuance log, the CA hierarchy, the
// authenticators and the serving certificate, records the start in the
// log, writes the root bundle and the log's verifier key to the data
// directory, and binds the listeners. Nothing is served until Run. On
// error nothing stays open.
func New(ctx context.Context, cfg *config.Config, opts Options) (_ *Daemon, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	d := &Daemon{cfg: cfg, log: opts.Logger, opts: opts, rootFile: filepath.Join(cfg.DataDir, "root-cert.pem")}
	defer func() {
		if err != nil {
			if cerr := d.Close(); cerr != nil {
				d.log.ErrorContext(ctx, "release after failed start", slog.Any("error", cerr))
			}
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	d.backend, err = OpenBackend(ctx, cfg, d.log)
	if err != nil {
		return nil, fmt.Errorf("key backend: %w", err)
	}
	if err := d.initDev(ctx); err != nil {
		return nil, err
	}
	if err := d.openLog(ctx); err != nil {
		return nil, err
	}
	if err := d.openAuthority(ctx); err != nil {
		return nil, err
	}
	if err := d.connectKube(); err != nil {
		return nil, err
	}
	if err := d.buildServers(ctx); err != nil {
		return nil, err
	}
	if err := d.openKube(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// initDev creates the dev CA (keys, root, checkpoint key) on first use and
// lets the dev admin identity in when none is configured.
func (d *Daemon) initDev(ctx context.Context) error {
	if !d.cfg.Dev {
		return nil
	}
	opts := d.issuerOptions()
	if _, err := issuer.Init(ctx, d.backend.Keys, d.backend.Certs, opts); err != nil {
		return fmt.Errorf("dev init: %w", err)
	}
	if _, err := d.backend.Keys.EnsureKey(ctx, d.cfg.Log.CheckpointKey, issuer.KeyEd25519); err != nil {
		return fmt.Errorf("dev init: checkpoint key: %w", err)
	}
	if len(d.cfg.Admin.Identities) == 0 {
		d.cfg.Admin.Identities = []string{d.cfg.DevAdminIdentity()}
	}
	return nil
}

func (d *Daemon) issuerOptions() issuer.Options {
	opts := d.cfg.IssuerOptions()
	opts.Logger = d.log
	opts.State = rotationState(d.cfg, d.backend)
	return opts
}

// rotationState is where the rotation state lives: Vault KV with
// check-and-set, so that replicas and restarts agree; a file in the data
// directory in dev mode.
func rotationState(cfg *config.Config, b *Backend) issuer.StateStore {
	if b.Session == nil {
		return issuer.NewFileState(filepath.Join(cfg.DataDir, RotationStateFileName))
	}
	return issuer.NewVaultState(b.Session.Client, cfg.Vault.KVMount, cfg.Vault.KVPrefix, cfg.Vault.Timeout.Std())
}

// RotationStateFileName is the file, in the data directory, that keeps
// the rotation state in dev mode.
const RotationStateFileName = "rotation.json"

// openLog opens the issuance log and publishes its verifier key.
func (d *Daemon) openLog(ctx context.Context) error {
	l, vkey, err := openLog(ctx, d.cfg, d.backend, d.log, d.opts.NoSync)
	if err != nil {
		return fmt.Errorf("issuance log: %w", err)
	}
	d.ilog, d.vkey, d.recorder = l, vkey, ca.LogRecorder{Log: l}
	d.logAtOpen = logAtStart(l)
	if err := atomicfile.Write(filepath.Join(d.cfg.DataDir, "log-verifier.vkey"), []byte(vkey+"\n"), 0o644); err != nil {
		return fmt.Errorf("write checkpoint verifier key: %w", err)
	}
	return nil
}

// openAuthority opens the CA hierarchy (recording every intermediate it
// puts to use) and records the daemon's start.
func (d *Daemon) openAuthority(ctx context.Context) error {
	opts := d.issuerOptions()
	opts.OnIntermediate = d.recorder.RecordIntermediate
	a, err := issuer.Open(ctx, d.backend.Keys, d.backend.Certs, opts)
	if err != nil {
		return fmt.Errorf("ca hierarchy: %w", err)
	}
	d.authority = a
	human := fmt.Sprintf("version=%s keys=%q intermediate_mode=%s root=%s root_key_version=%d %s",
		d.opts.Version, a.Describe(), a.Mode(), issuer.Fingerprint(a.Root()), a.RootKeyVersion(), ca.TierPolicyDetail(tierMaxTTLs(d.cfg)))
	detail, err := d.startRecord(ctx).Detail(human)
	if err != nil {
		return fmt.Errorf("record start: %w", err)
	}
	if err := d.recorder.RecordAdmin(ctx, ca.StartAction, "transitca", detail); err != nil {
		return fmt.Errorf("record start: %w", err)
	}
	d.started = true
	return nil
}

// tierMaxTTLs is the longest lifetime each tier may grant, the daemon's
// own serving certificate, istiod's and the drills' probes included.
func tierMaxTTLs(cfg *config.Config) map[string]time.Duration {
	ttl := map[string]time.Duration{
		ca.ServingTier: cfg.Server.TLS.CertTTL.Std(),
		ca.IstiodTier:  cfg.Kubernetes.Istiod.CertTTL.Std(),
		ca.DrillTier:   ca.DrillProbeTTL,
	}
	for name, t := range cfg.Tiers {
		ttl[name] = t.MaxTTL.Std()
	}
	return ttl
}

// hierarchyChanged brings the root bundle file, the trust bundle
// ConfigMaps and the serving certificate up to date after a rotation step,
// at once.
func (d *Daemon) hierarchyChanged(ctx context.Context) {
	if err := d.refreshHierarchy(ctx); err != nil {
		d.log.ErrorContext(ctx, "after a change of the CA hierarchy", slog.Any("error", err))
	}
}

// refreshHierarchy is hierarchyChanged, returning what failed.
func (d *Daemon) refreshHierarchy(ctx context.Context) error {
	var errs []error
	if err := writeRoots(d.rootFile, d.authority.Roots()); err != nil {
		errs = append(errs, fmt.Errorf("write root bundle: %w", err))
	}
	d.bundleChanged()
	if sc := d.serving.Load(); sc != nil {
		if err := sc.RenewIfDue(ctx); err != nil {
			errs = append(errs, fmt.Errorf("renew serving certificate: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Addr is the address the certificate service listens on.
func (d *Daemon) Addr() string { return d.lis.Addr().String() }

// AdminAddr is the admin API's address, or "" when it is off.
func (d *Daemon) AdminAddr() string {
	if d.adminLis == nil {
		return ""
	}
	return d.adminLis.Addr().String()
}

// MetricsAddr is the metrics listener's address, or "" when it is off.
func (d *Daemon) MetricsAddr() string {
	if d.metricsLis == nil {
		return ""
	}
	return d.metricsLis.Addr().String()
}

// RootFile is the PEM trust bundle the daemon keeps up to date.
func (d *Daemon) RootFile() string { return d.rootFile }

// Log is the issuance log.
func (d *Daemon) Log() *store.Log { return d.ilog }

// Authority is the CA hierarchy.
func (d *Daemon) Authority() *issuer.Authority { return d.authority }

// DevHint is what a dev-mode daemon tells its operator about getting a
// token; "" outside dev mode.
func (d *Daemon) DevHint() string { return d.devHint }

// Run serves until ctx ends or a server fails, then stops gracefully:
// health turns NOT_SERVING, the listeners stop accepting, requests in
// flight finish and the listeners close, leaving Close enough of
// server.shutdown_timeout to flush and close the log (logCloseTimeout).
// It does not close the log; Close does.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	background := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	defer wg.Wait()
	defer cancel()

	errc := make(chan error, 3)
	if d.metricsSrv != nil {
		background(func() {
			if err := d.metricsSrv.Serve(d.metricsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		})
		d.log.InfoContext(ctx, "metrics listening", slog.String("addr", d.MetricsAddr()))
	}
	if d.adminSrv != nil {
		background(func() {
			if err := d.adminSrv.Serve(d.adminLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("admin server: %w", err)
			}
		})
		if len(d.cfg.Admin.Identities)+len(d.cfg.Admin.Readers) == 0 {
			d.log.WarnContext(ctx, "admin.identities and admin.readers are empty: the admin API refuses every caller")
		}
		d.log.InfoContext(ctx, "admin API listening", slog.String("addr", d.AdminAddr()), slog.Any("operators", d.cfg.Admin.Identities),
			slog.Any("readers", d.cfg.Admin.Readers), slog.Any("admin_clusters", d.cfg.AdminClusters()))
	}
	background(func() { d.authority.Run(ctx) })
	background(func() { d.serving.Load().Run(ctx, servingEvery) })
	if s := d.backend.Session; s != nil {
		background(func() { s.Run(ctx) })
		background(func() { d.watchVault(ctx) })
	}
	background(func() { watchHierarchy(ctx, d.authority, hierarchyEvery, d.refreshHierarchy) })
	background(func() { d.runKube(ctx) })
	runPods(ctx, d.pods, background)
	background(func() { d.watchLog(ctx) })
	if every := time.Duration(d.cfg.Rotation.DrillInterval); every > 0 && d.adminSvc != nil {
		background(func() { d.drillEvery(ctx, every) })
	}
	if sc := d.cfg.Rotation.Schedule; sc.PrepareAt > 0 && d.adminSvc != nil {
		background(func() { d.rotateOnSchedule(ctx, sc) })
	}
	background(func() {
		if err := d.grpcSrv.Serve(d.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	})
	d.ready.Store(true)
	d.log.InfoContext(ctx, "transitca serving",
		slog.String("addr", d.Addr()),
		slog.String("keys", d.authority.Describe()),
		slog.String("intermediate_mode", string(d.authority.Mode())),
		slog.String("root_bundle", d.rootFile),
		slog.String("log", d.ilog.Path()),
		slog.String("log_origin", d.ilog.Origin()),
		slog.Uint64("log_size", d.ilog.Size()),
		slog.String("trust_domain", d.cfg.TrustDomain))

	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	d.shutdown(context.WithoutCancel(ctx), time.Now().Add(d.cfg.Server.ShutdownTimeout.Std()-logCloseTimeout(d.cfg)))
	return err
}

// shutdown stops serving: NOT_SERVING first, then a graceful stop (no new
// connections or requests; those in flight finish) until deadline, when
// the requests still running are cut off: their callers get Unavailable,
// which istio-agent retries, and a certificate is handed out only if it
// was recorded.
func (d *Daemon) shutdown(ctx context.Context, deadline time.Time) {
	start := time.Now()
	d.log.InfoContext(ctx, "shutting down", slog.Duration("grace", time.Until(deadline).Round(time.Millisecond)))
	d.ready.Store(false)
	d.health.Shutdown()
	stopped := make(chan struct{})
	go func() { d.grpcSrv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(max(time.Until(deadline), 0))
	defer t.Stop()
	select {
	case <-stopped:
		d.log.InfoContext(ctx, "requests in flight finished", slog.Duration("took", time.Since(start).Round(time.Millisecond)))
	case <-t.C:
		d.log.WarnContext(ctx, "requests still in flight at the shutdown deadline are cut off")
		d.grpcSrv.Stop()
	}
	if d.adminSrv != nil {
		d.adminSrv.Stop()
	}
	if d.metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = d.metricsSrv.Shutdown(sctx)
	}
}

// Close releases what New acquired: listeners not yet served, the
// issuance log (which writes its final checkpoint if it can) and then the
// Transit engine's signing goroutines. It is safe to call more than once.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		for _, l := range []net.Listener{d.lis, d.adminLis, d.metricsLis} {
			if l != nil {
				if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
					errs = append(errs, err)
				}
			}
		}
		if d.svc != nil {
			// After the gRPC server stopped, before the log closes: the
			// denials counted but not yet written are appended.
			if err := d.svc.Close(context.Background()); err != nil {
				errs = append(errs, fmt.Errorf("record counted denials: %w", err))
			}
		}
		if d.ilog != nil {
			if d.started {
				d.recordStop()
			}
			if err := d.ilog.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close issuance log: %w", err))
			}
		}
		if d.backend != nil && d.backend.Transit != nil {
			// After the log: its final checkpoint is signed through Transit.
			d.backend.Transit.Close()
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// drillEvery runs an intermediate drill on a schedule. A failed drill is
// logged and exported in the metrics; the daemon keeps serving.
func (d *Daemon) drillEvery(ctx context.Context, every time.Duration) {
	loop.Every(ctx, every, func(ctx context.Context) {
		rep, err := d.adminSvc.RunDrill(ctx, false)
		switch {
		case err != nil:
			d.log.ErrorContext(ctx, "scheduled drill", slog.Any("error", err))
		case !rep.GetPassed():
			d.log.ErrorContext(ctx, "scheduled drill failed; see ca admin status", slog.Int("steps", len(rep.GetSteps())))
		default:
			d.log.InfoContext(ctx, "scheduled drill passed", slog.Int("steps", len(rep.GetSteps())))
		}
	})
}

// rotateOnSchedule prepares and activates roots at the configured
// fractions of the active root's lifetime.
func (d *Daemon) rotateOnSchedule(ctx context.Context, sc config.RotationSchedule) {
	every := time.Duration(sc.CheckEvery)
	if every <= 0 {
		every = time.Hour
	}
	step := func(ctx context.Context) {
		did, err := d.adminSvc.ScheduledStep(ctx, sc.PrepareAt, sc.ActivateAt)
		switch {
		case err != nil:
			d.log.WarnContext(ctx, "root rotation schedule", slog.Any("error", err))
		case did != "":
			d.log.InfoContext(ctx, "root rotation schedule: "+did)
		}
	}
	step(ctx)
	loop.Every(ctx, every, step)
}

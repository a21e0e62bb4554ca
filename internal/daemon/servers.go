package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/spiffeid"
)

// buildServers makes the metrics, the certificate service, the serving
// certificate, the gRPC servers, and binds every listener.
func (d *Daemon) buildServers(ctx context.Context) error {
	cfg, a := d.cfg, d.authority
	d.reg = prometheus.NewRegistry()
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerLogMetrics(d.reg, d.ilog)
	metrics := ca.NewMetrics(d.reg, map[string]func() *x509.Certificate{
		"root":         a.Root,
		"intermediate": func() *x509.Certificate { return a.Intermediate().Cert },
		"serving": func() *x509.Certificate {
			if s := d.serving.Load(); s != nil {
				return s.Leaf()
			}
			return nil
		},
	})
	if d.backend.Transit != nil {
		d.backend.Transit.SetObserver(metrics.ObserveVault)
	}
	if d.backend.Session != nil {
		d.registerVaultMetrics()
	}
	clients, err := clusterClients(cfg, d.kubeAPI, "transitca/"+d.opts.Version)
	if err != nil {
		return err
	}
	authn, hint, err := buildAuthenticator(ctx, cfg, a, d.backend.Keys, metrics, d.kubeAPI, clients)
	if err != nil {
		return err
	}
	nodes, pods, err := buildNodeAuthorizer(cfg, clients)
	if err != nil {
		return err
	}
	d.pods = pods
	d.devHint = hint
	admin := &ca.AdminRoles{Operators: cfg.Admin.Identities, Readers: cfg.Admin.Readers, Clusters: cfg.AdminClusters()}
	svc, err := ca.NewService(ca.ServiceOptions{
		Authenticator: authn,
		Authority:     a,
		Policy:        cfg.IssuancePolicy(),
		CSR:           ca.CSRPolicy{MaxBytes: cfg.CSR.MaxBytes, AllowEd25519: cfg.CSR.AllowEd25519},
		Recorder:      d.recorder,
		Metrics:       metrics,
		Nodes:         nodes,
		Admin:         admin,
		Protected:     ca.Protected{Istiod: cfg.IstiodSPIFFEIDs(), Allow: cfg.Auth.AllowProtectedImpersonation},
		Clusters:      cfg.ClusterIDs(),
		Logger:        d.log,
		DenialLimits: ca.DenialLimits{PerPeerPerSecond: cfg.Limits.DenialsPerPeerPerSecond, Burst: cfg.Limits.DenialBurst,
			Window: cfg.Limits.DenialWindow.Std(), MaxPeers: cfg.Limits.DenialPeers},
		IdentityLimits: ca.IdentityLimits{PerSecond: cfg.Limits.IdentityRequestsPerSecond, Burst: cfg.Limits.IdentityBurst,
			MaxIdentities: cfg.Limits.Identities},
		MaxInFlight: cfg.Limits.MaxInFlight,
		MaxQueued:   cfg.Limits.MaxQueued,
		QueueWait:   cfg.Limits.QueueWait.Std(),
	})
	if err != nil {
		return fmt.Errorf("certificate service: %w", err)
	}
	d.svc = svc
	if err := d.issueServingCert(ctx); err != nil {
		return err
	}
	if err := writeRoots(d.rootFile, a.Roots()); err != nil {
		return fmt.Errorf("write root bundle: %w", err)
	}
	tlsCfg := ca.TLSConfig(d.serving.Load(), d.minTLS())
	d.grpcSrv, d.health = ca.NewGRPCServer(tlsCfg, svc, d.reg)
	if d.lis, err = net.Listen("tcp", cfg.Server.Listen); err != nil {
		return fmt.Errorf("server.listen %s: %w", cfg.Server.Listen, err)
	}
	if cfg.Server.MetricsListen != "" {
		if d.metricsLis, err = net.Listen("tcp", cfg.Server.MetricsListen); err != nil {
			return fmt.Errorf("server.metrics_listen %s: %w", cfg.Server.MetricsListen, err)
		}
		handler := ca.MetricsHandler(d.reg, d.readiness)
		if cfg.Server.Pprof {
			handler = ca.WithPprof(handler)
		}
		d.metricsSrv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	}
	if cfg.Admin.Listen != "" {
		certAuth, err := newCertAuthenticator(cfg, a)
		if err != nil {
			return fmt.Errorf("admin authenticator: %w", err)
		}
		if d.adminLis, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
			return fmt.Errorf("admin.listen %s: %w", cfg.Admin.Listen, err)
		}
		d.adminSvc = ca.NewAdminService(d.ilog, d.vkey, d.log)
		d.adminSvc.EnableRotation(d.rotationOptions(metrics))
		d.adminSrv = ca.NewAdminServer(tlsCfg, d.adminSvc,
			&ca.AdminAuthorizer{Certs: certAuth, Roles: admin, Logger: d.log, Audit: d.recorder},
			ca.AdminPort{CallTimeout: cfg.Admin.CallTimeout.Std(), Metrics: metrics, Denials: svc})
	}
	return nil
}

// rotationOptions are what the admin API needs to rotate and drill.
func (d *Daemon) rotationOptions(metrics *ca.Metrics) ca.RotationOptions {
	o := ca.RotationOptions{
		Authority: d.authority, Service: d.svc, Audit: d.recorder, RootKey: d.cfg.CA.RootKey,
		MinOverlap: d.cfg.MinOverlap(), AllowRootDrill: d.cfg.Rotation.AllowRootDrill,
		DrillIdentity: d.cfg.DrillIdentity(), Metrics: metrics, OnChange: d.hierarchyChanged,
		Custody: d.keyCustody,
	}
	if d.backend.Transit != nil {
		o.Keys = d.backend.Transit
	}
	return o
}

// issueServingCert issues the TLS serving certificate from the CA's own
// intermediate and records it.
func (d *Daemon) issueServingCert(ctx context.Context) error {
	cfg := d.cfg
	var ips []net.IP
	for _, s := range cfg.Server.TLS.IPAddresses {
		ips = append(ips, net.ParseIP(s))
	}
	selfID := spiffeid.New(cfg.TrustDomain, "transitca", "serving")
	sc, err := ca.NewServingCert(ctx, d.svc, ca.ServingCertOptions{
		DNSNames: cfg.Server.TLS.DNSNames, IPAddresses: ips, TTL: time.Duration(cfg.Server.TLS.CertTTL), Logger: d.log,
		SPIFFEID: selfID,
	})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	d.serving.Store(sc)
	return nil
}

func (d *Daemon) minTLS() uint16 {
	if d.cfg.Server.TLS.MinVersion == "1.2" {
		return tls.VersionTLS12
	}
	return tls.VersionTLS13
}

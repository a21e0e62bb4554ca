package daemon

import (
	"context"
	"fmt"
	"log/slog"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	pb "istio.io/api/security/v1alpha1"
)

// readiness reports whether the daemon serves, and if not, why; while it
// serves degraded, it says so.
func (d *Daemon) readiness() (bool, string) {
	if why := d.notReady.Load(); why != nil {
		return false, *why
	}
	if !d.ready.Load() {
		return false, "not serving"
	}
	if why := d.vaultDown.Load(); why != nil {
		return true, *why
	}
	return true, ""
}

// watchLog turns the daemon NOT_SERVING the moment the issuance log stops
// accepting appends: every issuance would fail, so Kubernetes must stop
// routing to this replica, and the operator is told why. When the log has
// recovered by itself (the disk takes writes again), the daemon serves
// again.
func (d *Daemon) watchLog(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.ilog.Failed():
		}
		why := fmt.Sprintf("issuance log failed, no certificate can be recorded: %v; check the disk of %s: the daemon serves again by itself once the log takes writes", d.ilog.Err(), d.ilog.Path())
		d.notReady.Store(&why)
		d.setServing(healthpb.HealthCheckResponse_NOT_SERVING)
		d.log.ErrorContext(ctx, "NOT_SERVING: "+why)
		select {
		case <-ctx.Done():
			return
		case <-d.ilog.Recovered():
		}
		d.notReady.Store(nil)
		d.setServing(healthpb.HealthCheckResponse_SERVING)
		d.log.InfoContext(ctx, "SERVING: the issuance log takes appends again", slog.Uint64("log_size", d.ilog.Size()))
	}
}

// setServing sets the health of the server and of the certificate
// service, unless the daemon is shutting down.
func (d *Daemon) setServing(s healthpb.HealthCheckResponse_ServingStatus) {
	if s == healthpb.HealthCheckResponse_SERVING && !d.ready.Load() {
		return
	}
	d.health.SetServingStatus("", s)
	d.health.SetServingStatus(pb.IstioCertificateService_ServiceDesc.ServiceName, s)
}

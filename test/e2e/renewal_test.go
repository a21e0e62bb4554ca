package e2e

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// A certificate carries the cluster it was issued for, so a renewal is
// judged as that cluster on whichever replica it reaches, though only the
// issuing replica's log shard records the certificate: a certificate
// replica 0 issued for cluster dev, presented to replica 1 with clusterid
// prod to get prod's tier and a DNS name only prod may have, is refused;
// renewed as dev it gets dev's tier, is recorded under dev, and ends no
// later than the certificate presented.
func TestRenewalOnAnotherReplicaIsJudgedAsTheIssuingCluster(t *testing.T) {
	rs := startReplicasWith(t, 2, caOptions{Mode: "memory", Auth: "  clusters: [Kubernetes, dev, prod]\n", Extra: `tiers:
  service: {max_ttl: 30d, default_ttl: 24h}
  privileged: {max_ttl: 7d, default_ttl: 24h}
  short: {max_ttl: 2h, default_ttl: 1h}
policy:
  - tier: short
    clusters: [dev]
  - tier: service
    clusters: [prod]
    dns_names: [web.prod.example]
`})
	dir := t.TempDir()
	s0, s1 := rs.replicas[0], rs.replicas[1]
	if out, err := runCA(t, s0, "request", "--addr", s0.Addr, "--server-name", "localhost", "--token-file", s0.tokenFile(t, "shop", "web"),
		"--root-cert", s0.RootFile, "--out", dir, "--cluster-id", "dev"); err != nil {
		t.Fatalf("ca request --cluster-id dev: %v\n%s", err, out)
	}
	dev := loadHeld(t, dir)
	if got := dev.leaf.NotAfter.Sub(dev.leaf.NotBefore); got > 2*time.Hour {
		t.Fatalf("issued for dev with a lifetime of %v, beyond dev's tier", got)
	}

	_, err := renewAs(t, s1, dev, "prod", "web.prod.example")
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), `issued for cluster "dev"`) {
		t.Fatalf("replica 1 renewing a dev certificate as prod: %v, want Unauthenticated naming dev", err)
	}
	chain, err := renewAs(t, s1, dev, "dev")
	if err != nil {
		t.Fatalf("replica 1 renewing a dev certificate as dev: %v", err)
	}
	renewed := chain[0]
	if renewed.NotAfter.After(dev.leaf.NotAfter) {
		t.Fatalf("the renewal ends at %s, after the certificate presented (%s)", renewed.NotAfter, dev.leaf.NotAfter)
	}

	pair, err := tls.LoadX509KeyPair(filepath.Join(rs.opDir, "cert-chain.pem"), filepath.Join(rs.opDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(rs.admin[1], grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: rootPool(t, readFile(t, s1.RootFile)), ServerName: "localhost", Certificates: []tls.Certificate{pair},
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := adminv1.NewAdminServiceClient(conn).QueryLog(ctx, &adminv1.QueryLogRequest{Serial: renewed.SerialNumber.Text(16)})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEntries()) != 1 {
		t.Fatalf("replica 1's log holds %d entries for the renewal", len(resp.GetEntries()))
	}
	if e := resp.GetEntries()[0]; e.GetClusterId() != "dev" || e.GetTier() != "short" || e.GetAuthMethod() != "client-certificate" {
		t.Fatalf("replica 1 recorded the renewal as cluster %q tier %q by %s, want dev, short, client-certificate", e.GetClusterId(), e.GetTier(), e.GetAuthMethod())
	}
}

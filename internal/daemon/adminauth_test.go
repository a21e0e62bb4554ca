package daemon

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/internal/config"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// withYAML decodes a piece of configuration file over cfg, as the file
// would set it, and validates the result.
func withYAML(t *testing.T, cfg *config.Config, text string) *config.Config {
	t.Helper()
	if err := config.Decode(strings.NewReader(text), cfg); err != nil {
		t.Fatalf("configuration %q: %v", text, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("configuration %q: %v", text, err)
	}
	return cfg
}

// adminCall is one admin method called with an empty request, as a client
// may: the answer's code is what the test looks at.
type adminCall struct {
	method string // the method's name in the admin proto
	call   func(ctx context.Context, c adminv1.AdminServiceClient) error
}

// drain reads a server stream to its end and returns its error (nil at
// io.EOF).
func drain[T any](s grpc.ServerStreamingClient[T], err error) error {
	if err != nil {
		return err
	}
	for {
		if _, err := s.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// readMethods and operatorMethods are every method of the admin API, in
// the role that may call it.
var (
	readMethods = []adminCall{
		{"QueryLog", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.QueryLog(ctx, &adminv1.QueryLogRequest{})
			return err
		}},
		{"GetEntry", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.GetEntry(ctx, &adminv1.GetEntryRequest{Key: &adminv1.GetEntryRequest_Seq{Seq: 0}})
			return err
		}},
		{"GetCheckpoint", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
			return err
		}},
		{"GetInclusionProof", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.GetInclusionProof(ctx, &adminv1.GetInclusionProofRequest{Key: &adminv1.GetInclusionProofRequest_Seq{Seq: 0}})
			return err
		}},
		{"GetConsistencyProof", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.GetConsistencyProof(ctx, &adminv1.GetConsistencyProofRequest{FromSize: 1})
			return err
		}},
		{"VerifyLog", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.VerifyLog(ctx, &adminv1.VerifyLogRequest{})
			return err
		}},
		{"Backup", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			return drain(c.Backup(ctx, &adminv1.BackupRequest{}))
		}},
		{"Status", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.Status(ctx, &adminv1.StatusRequest{})
			return err
		}},
	}
	operatorMethods = []adminCall{
		{"RotateIntermediate", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.RotateIntermediate(ctx, &adminv1.RotateIntermediateRequest{Reason: "role test"})
			return err
		}},
		{"PrepareRoot", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.PrepareRoot(ctx, &adminv1.PrepareRootRequest{Reason: "role test"})
			return err
		}},
		{"ActivateRoot", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Force: true, Reason: "role test"})
			return err
		}},
		{"RetireRoot", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.RetireRoot(ctx, &adminv1.RetireRootRequest{Reason: "role test"})
			return err
		}},
		{"Drill", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			_, err := c.Drill(ctx, &adminv1.DrillRequest{})
			return err
		}},
		// Last: it revokes the intermediate every certificate of the test
		// chains through.
		{"RevokeIntermediate", func(ctx context.Context, c adminv1.AdminServiceClient) error {
			return drain(c.RevokeIntermediate(ctx, &adminv1.RevokeIntermediateRequest{Reason: "role test"}))
		}},
	}
)

// The two lists name every method of the admin API, so that a method
// added to the proto is given a role here, and a test, before it ships.
func TestAdminMethodListsAreComplete(t *testing.T) {
	var listed, served []string
	for _, m := range slices.Concat(readMethods, operatorMethods) {
		listed = append(listed, m.method)
	}
	for _, m := range adminv1.AdminService_ServiceDesc.Methods {
		served = append(served, m.MethodName)
	}
	for _, s := range adminv1.AdminService_ServiceDesc.Streams {
		served = append(served, s.StreamName)
	}
	slices.Sort(listed)
	slices.Sort(served)
	if !slices.Equal(listed, served) {
		t.Fatalf("the test's methods %v are not the admin API's %v", listed, served)
	}
}

// A reader (admin.readers) calls every read-only method of the admin API
// and is refused every method that changes the CA, with PermissionDenied,
// recorded in the log under its identity, and the CA unchanged; an
// operator (admin.identities) is refused nothing; a workload that is
// neither is refused everything.
func TestAdminReaderRole(t *testing.T) {
	cfg := withYAML(t, devConfig(t, t.TempDir()), `
admin:
  identities: [spiffe://cluster.local/ns/transitca/sa/admin]
  readers: [spiffe://cluster.local/ns/security/sa/auditor]
`)
	d := startDaemon(t, cfg)
	ctx := context.Background()
	reader := d.admin(t, d.request(t, "security", "auditor"))
	operator := d.admin(t, d.request(t, "transitca", "admin"))
	stranger := d.admin(t, d.request(t, "shop", "web"))
	const readerID = "spiffe://cluster.local/ns/security/sa/auditor"

	statusOf := func() *adminv1.StatusResponse {
		t.Helper()
		st, err := operator.Status(ctx, &adminv1.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	before := statusOf()

	for _, m := range readMethods {
		if err := m.call(ctx, reader); status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
			t.Errorf("reader calling %s: %v, want it allowed", m.method, err)
		}
	}
	for _, m := range operatorMethods {
		err := m.call(ctx, reader)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "reader") {
			t.Errorf("reader calling %s: %v, want PermissionDenied naming its reader role", m.method, err)
			continue
		}
		e, qerr := d.Log().Get(ctx, d.Log().Size()-1)
		if qerr != nil {
			t.Fatal(qerr)
		}
		// A refused admin call is a denial, as a refused certificate
		// request is: under the caller's identity, with the method.
		if e.Kind != store.KindDenial || e.SPIFFEID != readerID || e.Code != codes.PermissionDenied.String() ||
			!strings.Contains(e.Reason, "admin call "+m.method+" refused") || !strings.Contains(e.Detail, "class=admin_permission_denied") {
			t.Errorf("reader calling %s: the last entry is %v by %q (%s): %q, %q; want the refused call recorded as the reader's denial", m.method, e.Kind, e.SPIFFEID, e.Code, e.Reason, e.Detail)
		}
	}
	after := statusOf()
	if before.GetIntermediate().GetFingerprint() != after.GetIntermediate().GetFingerprint() || len(after.GetRoots()) != len(before.GetRoots()) {
		t.Fatalf("the reader's refused calls changed the CA: intermediate %s → %s, %d → %d roots",
			before.GetIntermediate().GetFingerprint(), after.GetIntermediate().GetFingerprint(), len(before.GetRoots()), len(after.GetRoots()))
	}

	for _, m := range slices.Concat(readMethods, operatorMethods) {
		if err := m.call(ctx, stranger); status.Code(err) != codes.PermissionDenied {
			t.Errorf("a workload calling %s: %v, want PermissionDenied", m.method, err)
		}
	}
	for _, m := range slices.Concat(readMethods, operatorMethods) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := m.call(cctx, operator)
		cancel()
		if status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
			t.Errorf("operator calling %s: %v, want it allowed", m.method, err)
		}
	}
}

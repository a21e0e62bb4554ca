package ca

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// AdminService serves the issuance log to the security team: queries,
// entries, checkpoints, offline-checkable proofs, verification, backups. It
// never changes an entry.
type AdminService struct {
	adminv1.UnimplementedAdminServiceServer

	log         *store.Log
	verifierKey string
	logger      *slog.Logger
	// rot is set by EnableRotation; nil serves the log only.
	rot *rotation
}

// NewAdminService returns the admin service over an open log. verifierKey
// is the note verifier key of the checkpoint signer, handed out with
// checkpoints.
func NewAdminService(l *store.Log, verifierKey string, logger *slog.Logger) *AdminService {
	if logger == nil {
		logger = slog.Default()
	}
	return &AdminService{log: l, verifierKey: verifierKey, logger: logger}
}

// AdminAuthorizer admits only callers whose client certificate chains to
// transitca's roots and carries an admin SPIFFE ID, to the methods of its
// role. An admin call names no cluster: the clusterid header is not read.
type AdminAuthorizer struct {
	// Certs authenticates the client certificate (a CertAuthenticator
	// with the chain check, as on the Istio port).
	Certs Authenticator
	// Roles give each admin identity its role.
	Roles  *AdminRoles
	Logger *slog.Logger
	// Audit, when set, records every admin call, allowed or refused, with
	// its caller, method, arguments and outcome.
	Audit AdminAudit
}

// AdminAudit records administrative actions in the issuance log
// (LogRecorder does).
type AdminAudit interface {
	RecordAdmin(ctx context.Context, action, actor, detail string) error
}

// AdminCallAction is the action of the admin entry recorded for every
// admin API call.
const AdminCallAction = "admin-call"

// finish records one admin call and turns its error into the status the
// caller gets. The status is made once, so that the outcome recorded in
// the log (an Internal error's reference included) is the one the caller
// sees. The record is written whatever became of the caller's context (a
// caller that went away, a call past its deadline). A call whose record
// cannot be written fails with the recording error, so that no action
// goes unrecorded unnoticed.
func (a *AdminAuthorizer) finish(ctx context.Context, caller *Caller, method string, req any, callErr error) error {
	var st *status.Status
	if callErr != nil {
		st = adminStatusOf(ctx, a.Logger, callErr)
	}
	rctx, cancel := recordContext(ctx)
	defer cancel()
	if err := a.audit(rctx, caller, method, req, st); err != nil && st == nil {
		st = adminStatusOf(ctx, a.Logger, err)
	}
	return st.Err()
}

// audit records one admin call with its outcome st (nil: ok).
func (a *AdminAuthorizer) audit(ctx context.Context, caller *Caller, method string, req any, st *status.Status) error {
	if a.Audit == nil {
		return nil
	}
	actor := "unauthenticated"
	if caller != nil {
		actor = callerActor(caller)
	} else if cert := presentedCert(ctx); cert != "" {
		actor += " " + cert
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		actor += " from " + p.Addr.String()
	}
	detail := "method=" + method[strings.LastIndex(method, "/")+1:]
	if m, ok := req.(proto.Message); ok {
		if b, err := protojson.Marshal(m); err == nil && len(b) > 2 {
			detail += " args=" + bound(string(b), MaxQuotedBytes)
		}
	}
	outcome := "ok"
	if st != nil {
		outcome = st.Code().String() + ": " + st.Message()
	}
	detail = boundMessage(detail + " outcome=" + outcome)
	if err := a.Audit.RecordAdmin(ctx, AdminCallAction, bound(actor, 2*MaxQuotedBytes), detail); err != nil {
		a.Logger.ErrorContext(ctx, "record admin call", slog.String("method", method), slog.Any("error", err))
		return fmt.Errorf("record admin call: %w", err)
	}
	return nil
}

// callerActor names an admin caller in the log: its SPIFFE ID and, for a
// client certificate, the certificate's serial and the SHA-256 of the CA
// certificate that signed it, so that two certificates for one identity
// (a real one and one an attacker had signed) are told apart.
func callerActor(c *Caller) string {
	id := bound(c.SPIFFEID, MaxQuotedBytes)
	if c.ClientCert == nil {
		return id
	}
	return id + " cert serial=" + bound(c.Subject, maxSerialText) + " issuer=" + c.ClientCertIssuer
}

// maxSerialText bounds a certificate serial in hex in an actor: 20 octets,
// the most RFC 5280 allows, are 40 digits.
const maxSerialText = 64

// presentedCert names the client certificate of a call that did not
// authenticate: its serial and the SHA-256 of the next certificate the
// client sent (its claimed issuer), "" without one.
func presentedCert(ctx context.Context) string {
	cred, err := CredentialsFromContext(ctx)
	if err != nil || len(cred.PeerChains) == 0 || len(cred.PeerChains[0]) == 0 || cred.PeerChains[0][0] == nil {
		return ""
	}
	chain := cred.PeerChains[0]
	s := "cert serial=" + bound(chain[0].SerialNumber.Text(16), maxSerialText)
	if len(chain) > 1 && chain[1] != nil {
		s += " issuer=" + issuer.Fingerprint(chain[1])
	}
	return s
}

// adminCredentials drops what an admin call's credentials must not decide:
// the clusterid header. The certificate alone says who calls and the
// cluster it was issued for.
func adminCredentials(cred Credentials) Credentials {
	cred.ClusterID = ""
	return cred
}

func (a *AdminAuthorizer) authorize(ctx context.Context, method string) (*Caller, error) {
	cred, err := CredentialsFromContext(ctx)
	if err != nil {
		return nil, err
	}
	if len(cred.PeerChains) == 0 {
		return nil, fmt.Errorf("%w: the admin API needs a client certificate carrying an admin SPIFFE ID", ErrUnauthenticated)
	}
	caller, err := a.Certs.Authenticate(ctx, adminCredentials(cred))
	if err != nil {
		return nil, err
	}
	if err := a.Roles.authorize(caller, method); err != nil {
		return caller, err
	}
	a.Logger.InfoContext(ctx, "admin call", slog.String("method", method), slog.String("caller", caller.SPIFFEID),
		slog.String("role", a.Roles.Role(caller.SPIFFEID).String()))
	return caller, nil
}

// NewAdminServer returns the admin gRPC server over TLS, with every call
// authorized by authz, and ended, counted and recorded as port says.
func NewAdminServer(tlsCfg *tls.Config, svc *AdminService, authz *AdminAuthorizer, port AdminPort) *grpc.Server {
	if authz.Logger == nil {
		authz.Logger = slog.Default()
	}
	p := newAdminPort(authz, port)
	opts := []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			caller, err := authz.authorize(ctx, info.FullMethod)
			if err != nil {
				return nil, p.refuse(ctx, caller, info.FullMethod, req, err)
			}
			resp, err := h(WithAdminCaller(ctx, caller), req)
			if err := authz.finish(ctx, caller, info.FullMethod, req, err); err != nil {
				return nil, err
			}
			return resp, nil
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx := ss.Context()
			caller, err := authz.authorize(ctx, info.FullMethod)
			if err != nil {
				return p.refuse(ctx, caller, info.FullMethod, nil, err)
			}
			err = h(srv, &callerStream{ServerStream: ss, ctx: WithAdminCaller(ctx, caller)})
			return authz.finish(ctx, caller, info.FullMethod, nil, err)
		}),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.MaxHeaderListSize(MaxHeaderListBytes),
	}
	opts = append(append(opts, connectionLimits()...), p.serverOptions()...)
	s := grpc.NewServer(opts...)
	adminv1.RegisterAdminServiceServer(s, svc)
	return s
}

// callerStream carries the admin caller in a stream's context.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

type adminCallerKey struct{}

// WithAdminCaller returns ctx carrying the authorized admin caller, which
// admin methods record as the actor of what they do.
func WithAdminCaller(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, adminCallerKey{}, c)
}

// AdminCallerFrom returns the admin caller of ctx, or nil.
func AdminCallerFrom(ctx context.Context) *Caller {
	c, _ := ctx.Value(adminCallerKey{}).(*Caller)
	return c
}

// QueryLog returns a page of entries.
func (s *AdminService) QueryLog(ctx context.Context, req *adminv1.QueryLogRequest) (*adminv1.QueryLogResponse, error) {
	q := store.Query{
		Serial:    store.NormalizeSerial(req.GetSerial()),
		SPIFFEID:  req.GetSpiffeId(),
		Namespace: req.GetNamespace(),
		Issuer:    req.GetIssuer(),
		Cluster:   req.GetCluster(),
		Newest:    req.GetNewestFirst(),
		Limit:     int(req.GetLimit()),
		MaxBytes:  AdminPageBytes,
		PageToken: req.GetPageToken(),
	}
	if k := req.GetKind(); k != adminv1.Kind_KIND_UNSPECIFIED {
		if k < adminv1.Kind_KIND_ISSUANCE || k > adminv1.Kind_KIND_ADMIN {
			return nil, fmt.Errorf("%w: unknown entry kind %d", ErrInvalidRequest, k)
		}
		kind := store.Kind(k)
		q.Kind = &kind
	}
	q.From, q.To = asTime(req.GetFrom()), asTime(req.GetTo())
	q.ValidAt, q.ExpiringBefore = asTime(req.GetValidAt()), asTime(req.GetExpiringBefore())
	entries, next, err := s.log.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	resp := &adminv1.QueryLogResponse{NextPageToken: next}
	for _, e := range entries {
		resp.Entries = append(resp.Entries, EntryToProto(e, nil))
	}
	return resp, nil
}

func asTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// seqOf resolves an entry named by sequence number or serial.
func (s *AdminService) seqOf(ctx context.Context, seq *uint64, serial string) (uint64, error) {
	if seq != nil {
		return *seq, nil
	}
	if serial == "" {
		return 0, fmt.Errorf("%w: name an entry by seq or serial", ErrInvalidRequest)
	}
	entries, _, err := s.log.Query(ctx, store.Query{Serial: store.NormalizeSerial(serial), Limit: 1})
	if err != nil {
		return 0, err
	}
	if len(entries) == 0 {
		return 0, fmt.Errorf("serial %s: %w", serial, store.ErrNotFound)
	}
	return entries[0].Seq, nil
}

// GetEntry returns one entry with its leaf data.
func (s *AdminService) GetEntry(ctx context.Context, req *adminv1.GetEntryRequest) (*adminv1.GetEntryResponse, error) {
	var seqp *uint64
	if k, ok := req.GetKey().(*adminv1.GetEntryRequest_Seq); ok {
		seqp = &k.Seq
	}
	seq, err := s.seqOf(ctx, seqp, req.GetSerial())
	if err != nil {
		return nil, err
	}
	e, err := s.log.Get(ctx, seq)
	if err != nil {
		return nil, err
	}
	leaf, err := s.log.LeafData(ctx, seq)
	if err != nil {
		return nil, err
	}
	return &adminv1.GetEntryResponse{Entry: EntryToProto(e, leaf)}, nil
}

// GetCheckpoint returns the latest signed checkpoint, writing one first
// when entries were appended since the last.
func (s *AdminService) GetCheckpoint(ctx context.Context, _ *adminv1.GetCheckpointRequest) (*adminv1.GetCheckpointResponse, error) {
	cp, err := s.latest(ctx)
	if err != nil {
		return nil, err
	}
	return &adminv1.GetCheckpointResponse{Checkpoint: cp, VerifierKey: s.verifierKey}, nil
}

// latest checkpoints the entries appended since the last checkpoint, or,
// on a log opened read-only, returns the last checkpoint.
func (s *AdminService) latest(ctx context.Context) ([]byte, error) {
	cp, err := s.log.WriteCheckpoint(ctx)
	if errors.Is(err, store.ErrReadOnly) {
		return s.log.LatestCheckpoint(ctx)
	}
	return cp, err
}

// GetInclusionProof proves an entry is in a checkpointed tree.
func (s *AdminService) GetInclusionProof(ctx context.Context, req *adminv1.GetInclusionProofRequest) (*adminv1.GetInclusionProofResponse, error) {
	var seqp *uint64
	if k, ok := req.GetKey().(*adminv1.GetInclusionProofRequest_Seq); ok {
		seqp = &k.Seq
	}
	seq, err := s.seqOf(ctx, seqp, req.GetSerial())
	if err != nil {
		return nil, err
	}
	cp, size, err := s.checkpoint(ctx, req.GetTreeSize())
	if err != nil {
		return nil, err
	}
	if seq >= size {
		return nil, fmt.Errorf("%w: entry %d is not in the tree of size %d; ask again after the next checkpoint", ErrInvalidRequest, seq, size)
	}
	proof, err := s.log.InclusionProof(ctx, seq, size)
	if err != nil {
		return nil, err
	}
	leaf, err := s.log.LeafData(ctx, seq)
	if err != nil {
		return nil, err
	}
	return &adminv1.GetInclusionProofResponse{Index: seq, LeafData: leaf, Proof: proof, Checkpoint: cp}, nil
}

// checkpoint returns the checkpoint of a tree size, or the latest (written
// now if entries were appended since) when size is 0.
func (s *AdminService) checkpoint(ctx context.Context, size uint64) ([]byte, uint64, error) {
	var (
		cp  []byte
		err error
	)
	if size == 0 {
		cp, err = s.latest(ctx)
	} else {
		cp, err = s.log.CheckpointAt(ctx, size)
	}
	if err != nil {
		return nil, 0, err
	}
	body, err := store.ParseCheckpoint(string(cp))
	return cp, body.Size, err
}

// GetConsistencyProof proves the log only grew between two checkpoints.
func (s *AdminService) GetConsistencyProof(ctx context.Context, req *adminv1.GetConsistencyProofRequest) (*adminv1.GetConsistencyProofResponse, error) {
	// The caller usually holds the older checkpoint already; it is returned
	// when the log stored one of that size.
	from, err := s.log.CheckpointAt(ctx, req.GetFromSize())
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	to, size, err := s.checkpoint(ctx, req.GetToSize())
	if err != nil {
		return nil, err
	}
	proof, err := s.log.ConsistencyProof(ctx, req.GetFromSize(), size)
	if err != nil {
		return nil, err
	}
	return &adminv1.GetConsistencyProofResponse{Proof: proof, FromCheckpoint: from, ToCheckpoint: to}, nil
}

// VerifyLog recomputes the whole log.
func (s *AdminService) VerifyLog(ctx context.Context, _ *adminv1.VerifyLogRequest) (*adminv1.VerifyLogResponse, error) {
	res, err := s.log.Verify(ctx, nil)
	if err != nil {
		return nil, err
	}
	return &adminv1.VerifyLogResponse{TreeSize: res.Size, RootHash: res.Root, CheckpointsChecked: uint64(res.Checkpoints)}, nil
}

// Backup signs a checkpoint over the entries appended since the last one,
// so that the backup's newest entries can be proven too, then streams a
// consistent snapshot of the log file. A checkpoint that cannot be signed
// (Vault down) is logged and the backup is still made. The snapshot is
// taken whole first (store.Log.Snapshot), so that no transaction of the
// log waits on the pace of the caller.
func (s *AdminService) Backup(_ *adminv1.BackupRequest, stream adminv1.AdminService_BackupServer) error {
	ctx := stream.Context()
	if _, err := s.latest(ctx); err != nil {
		s.logger.WarnContext(ctx, "backup: no checkpoint signed before the snapshot; its newest entries are not under one", slog.Any("error", err))
	}
	snap, err := s.log.Snapshot(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = snap.Close() }()
	w := &chunkWriter{send: func(b []byte) error {
		if err := stream.Send(&adminv1.BackupResponse{Data: b}); err != nil {
			// The caller went away or the call's deadline passed: say
			// which, not how the transport noticed.
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			return err
		}
		return nil
	}}
	if _, err := io.Copy(w, snap); err != nil {
		return err
	}
	return w.flush()
}

// chunkWriter cuts a byte stream into messages of at most 1 MiB.
type chunkWriter struct {
	buf  []byte
	send func([]byte) error
}

const backupChunk = 1 << 20

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(backupChunk-len(w.buf), len(p))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == backupChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(w.buf)
	w.buf = nil
	return err
}

var _ io.Writer = (*chunkWriter)(nil)

// EntryToProto converts a log entry to its API form.
func EntryToProto(e *store.Entry, leaf []byte) *adminv1.Entry {
	ts := func(t time.Time) *timestamppb.Timestamp {
		if t.IsZero() {
			return nil
		}
		return timestamppb.New(t)
	}
	d := func(v time.Duration) *durationpb.Duration {
		if v == 0 {
			return nil
		}
		return durationpb.New(v)
	}
	return &adminv1.Entry{
		Seq: e.Seq, Kind: adminv1.Kind(e.Kind), Time: ts(e.Time),
		Serial: e.Serial, SpiffeId: e.SPIFFEID, Namespace: e.Namespace, ServiceAccount: e.ServiceAccount,
		Tier: e.Tier, RequestedTtl: d(e.RequestedTTL), GrantedTtl: d(e.GrantedTTL),
		NotBefore: ts(e.NotBefore), NotAfter: ts(e.NotAfter),
		IssuerFingerprint: e.IssuerFingerprint, IssuerKeyVersion: int64(e.IssuerKeyVersion), RootKeyVersion: int64(e.RootKeyVersion),
		CallerId: e.CallerID, AuthMethod: e.AuthMethod, CallerSubject: e.CallerSubject, ClusterId: e.ClusterID,
		Certificate: e.Certificate, Code: e.Code, Reason: e.Reason, Action: e.Action, Actor: e.Actor, Detail: e.Detail,
		LeafData: leaf, PodName: e.PodName, PodUid: e.PodUID, CallerNode: e.CallerNode,
	}
}

// EntryFromProto converts an API entry back to a log entry.
func EntryFromProto(p *adminv1.Entry) *store.Entry {
	return &store.Entry{
		Seq: p.GetSeq(), Kind: store.Kind(p.GetKind()), Time: asTime(p.GetTime()),
		Serial: p.GetSerial(), SPIFFEID: p.GetSpiffeId(), Namespace: p.GetNamespace(), ServiceAccount: p.GetServiceAccount(),
		Tier: p.GetTier(), RequestedTTL: p.GetRequestedTtl().AsDuration(), GrantedTTL: p.GetGrantedTtl().AsDuration(),
		NotBefore: asTime(p.GetNotBefore()), NotAfter: asTime(p.GetNotAfter()),
		IssuerFingerprint: p.GetIssuerFingerprint(), IssuerKeyVersion: int(p.GetIssuerKeyVersion()), RootKeyVersion: int(p.GetRootKeyVersion()),
		CallerID: p.GetCallerId(), AuthMethod: p.GetAuthMethod(), CallerSubject: p.GetCallerSubject(), ClusterID: p.GetClusterId(),
		Certificate: p.GetCertificate(), Code: p.GetCode(), Reason: p.GetReason(), Action: p.GetAction(), Actor: p.GetActor(), Detail: p.GetDetail(),
		PodName: p.GetPodName(), PodUID: p.GetPodUid(), CallerNode: p.GetCallerNode(),
	}
}

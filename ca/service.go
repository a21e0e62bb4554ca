package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	pb "istio.io/api/security/v1alpha1"

	"github.com/transitca/transitca/internal/spiffeid"
	"github.com/transitca/transitca/issuer"
)

// Service implements Istio's IstioCertificateService. Every request goes
// through one pipeline, in this order: authenticate → check the CSR →
// choose tier and TTL → build the template → sign → verify the chain against
// the roots → record (durably) → answer. If recording fails, the request
// fails: no certificate leaves unrecorded.
type Service struct {
	pb.UnimplementedIstioCertificateServiceServer

	auth      Authenticator
	authority *issuer.Authority
	policy    *issuer.Policy
	csr       CSRPolicy
	recorder  Recorder
	nodes     *NodeAuthorizer  // nil: impersonation is refused
	admin     *AdminRoles      // nil: no identity is an admin's
	protected Protected        // identities node agents are not issued
	clusters  []string         // served cluster IDs, recorded with unauthenticated denials
	denials   *denialLimiter   // nil without DenialLimits
	rate      *identityLimiter // nil without IdentityLimits
	admission *admission       // MaxInFlight, MaxQueued, QueueWait
	metrics   *Metrics
	log       *slog.Logger
	now       func() time.Time

	// chain is the last intermediate (and root set) whose path validation
	// passed; leaves it signs need only their own checks.
	chain atomic.Pointer[verifiedChain]
}

// verifiedChain is an intermediate whose path to roots verified, with the
// PEM every answer carries: the intermediate's and the root bundle's.
type verifiedChain struct {
	issuer    *x509.Certificate
	roots     []*x509.Certificate
	issuerPEM string
	bundle    string
}

func newVerifiedChain(issuer *x509.Certificate, roots []*x509.Certificate) *verifiedChain {
	var b strings.Builder
	for _, r := range roots {
		b.Write(pemCert(r))
	}
	return &verifiedChain{issuer: issuer, roots: roots, issuerPEM: string(pemCert(issuer)), bundle: b.String()}
}

// ServiceOptions configure a Service.
type ServiceOptions struct {
	Authenticator Authenticator
	Authority     *issuer.Authority
	Policy        *issuer.Policy
	CSR           CSRPolicy
	Recorder      Recorder
	Metrics       *Metrics
	// Nodes authorizes node agents (ztunnel) to ask for the identities of
	// pods on their node. Nil refuses every ImpersonatedIdentity.
	Nodes *NodeAuthorizer
	// Admin are the admin API's identities: an admin identity is issued
	// only to callers of Admin.Clusters, and never by impersonation
	// unless Protected.Allow names it. Nil: no identity is an admin's.
	Admin *AdminRoles
	// Protected are the other identities node agents are not issued by
	// impersonation unless Protected.Allow names them.
	Protected Protected
	// Clusters are the cluster IDs served. The denial of a caller that
	// could not be authenticated records the cluster it claimed when it is
	// one of these.
	Clusters []string
	// DenialLimits bound the log entries one peer's denials write; the
	// zero value records every denial individually. With limits, Close
	// MUST be called after the server stops and before the recorder's log
	// closes, so that the denials still counted are written.
	DenialLimits DenialLimits
	// IdentityLimits bound how often one identity may ask; beyond them a
	// request is denied with ResourceExhausted (and recorded as a denial).
	// The zero value is no limit.
	IdentityLimits IdentityLimits
	// MaxInFlight caps the CreateCertificate calls NewGRPCServer's server
	// handles at once; beyond it a call waits in the queue (MaxQueued,
	// QueueWait) before it is refused with ResourceExhausted. 0 is no cap.
	MaxInFlight int
	// MaxQueued is how many calls beyond MaxInFlight wait for a place, in
	// the order they arrived; a call beyond those is refused at once with
	// ResourceExhausted. 0 refuses every call beyond MaxInFlight at once.
	MaxQueued int
	// QueueWait is how long a call waits in the queue for a place before
	// it is refused with ResourceExhausted; 0 means DefaultQueueWait.
	QueueWait time.Duration
	Logger    *slog.Logger
	Now       func() time.Time
}

// NewService returns the certificate service.
func NewService(o ServiceOptions) (*Service, error) {
	if o.Authenticator == nil || o.Authority == nil || o.Policy == nil || o.Recorder == nil || o.Metrics == nil {
		return nil, errors.New("ca service: authenticator, authority, policy, recorder and metrics are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := o.DenialLimits
	if l.enabled() && (l.Burst < 1 || l.Window <= 0 || l.MaxPeers < 1) {
		return nil, errors.New("ca service: denial limits need a burst, a window and a peer cap of at least 1")
	}
	if err := o.Protected.validate(); err != nil {
		return nil, fmt.Errorf("ca service: %w", err)
	}
	il := o.IdentityLimits
	if il.enabled() && (il.Burst < 1 || il.MaxIdentities < 1) {
		return nil, errors.New("ca service: identity limits need a burst and an identity cap of at least 1")
	}
	s := &Service{
		auth: o.Authenticator, authority: o.Authority, policy: o.Policy, csr: o.CSR,
		recorder: o.Recorder, nodes: o.Nodes, admin: o.Admin, protected: o.Protected, clusters: o.Clusters, metrics: o.Metrics, log: o.Logger, now: o.Now,
		admission: newAdmission(o.MaxInFlight, o.MaxQueued, o.QueueWait, o.Metrics.queued),
	}
	if il.enabled() {
		s.rate = newIdentityLimiter(il)
	}
	if l.enabled() {
		s.denials = newDenialLimiter(o.Recorder, l, o.Metrics, o.Logger, o.Now)
	}
	return s, nil
}

// Close writes the denials still counted under DenialLimits and stops
// counting: denials after Close are recorded one entry each. Call it once
// the gRPC server has stopped, before the log closes.
func (s *Service) Close(ctx context.Context) error {
	if s.denials == nil {
		return nil
	}
	return s.denials.close(ctx)
}

// MaxValidityDuration bounds validity_duration before any tier applies: a
// request for more than ten years is malformed, not merely ambitious.
const MaxValidityDuration = 10 * 365 * 24 * 3600

// CreateCertificate signs a workload's CSR.
func (s *Service) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	start := s.now()
	if err := s.admission.await(ctx); err != nil {
		if errors.Is(err, ErrOverloaded) {
			s.metrics.rejections.WithLabelValues("overload_queue_wait").Inc()
		}
		return nil, s.toStatus(ctx, err).Err()
	}
	caller, tier, chain, err := s.issue(ctx, req)
	outcome := "issued"
	if err != nil {
		st := s.toStatus(ctx, err)
		outcome = "denied"
		if st.Code() == codes.Internal || st.Code() == codes.Unavailable || st.Code() == codes.Canceled || st.Code() == codes.DeadlineExceeded {
			outcome = "error"
		}
		class := rejectionReason(err, st.Code())
		s.metrics.rejections.WithLabelValues(class).Inc()
		s.metrics.requests.WithLabelValues(tier, outcome).Inc()
		s.metrics.latency.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
		d := &Denial{Time: start, Caller: caller, Code: st.Code(), Reason: boundMessage(err.Error())}
		if caller == nil {
			d.ClusterID = s.claimedCluster(ctx)
		}
		if rerr := s.recordDenial(ctx, d, class); rerr != nil {
			s.log.ErrorContext(ctx, "record denial", slog.Any("error", rerr))
		}
		return nil, st.Err()
	}
	s.metrics.requests.WithLabelValues(tier, outcome).Inc()
	s.metrics.latency.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

// recordDenial records d, naming the peer and the kind of denial in its
// Detail, individually or counted under DenialLimits.
func (s *Service) recordDenial(ctx context.Context, d *Denial, class string) error {
	p := peerKey(ctx)
	d.Detail = "peer=" + p + " class=" + class
	if s.denials == nil {
		return s.recorder.RecordDenial(ctx, d)
	}
	return s.denials.record(ctx, d, p, class)
}

// issue runs the pipeline. It returns the caller and tier as far as they are
// known, for the record of a denial.
func (s *Service) issue(ctx context.Context, req *pb.IstioCertificateRequest) (*Caller, string, []string, error) {
	cred, err := CredentialsFromContext(ctx)
	if err != nil {
		return nil, "", nil, stage("auth", err)
	}
	caller, err := s.auth.Authenticate(ctx, cred)
	if err != nil {
		return nil, "", nil, stage("auth", err)
	}
	if caller, err = s.impersonate(ctx, req, caller); err != nil {
		return caller, "", nil, stage("impersonate", err)
	}
	if err := s.admin.checkIssuance(caller); err != nil {
		return caller, "", nil, stage("admin", err)
	}
	if req.GetValidityDuration() < 0 || req.GetValidityDuration() > MaxValidityDuration {
		return caller, "", nil, stage("ttl", fmt.Errorf("%w: validity_duration %d is out of range (0 to %d seconds)", ErrInvalidRequest, req.GetValidityDuration(), MaxValidityDuration))
	}
	decision := s.policy.Decide(caller.SPIFFEID, caller.Namespace, caller.ServiceAccount, caller.ClusterID)
	tier := decision.Tier.Name
	csrPolicy := s.csr
	csrPolicy.AllowedDNSNames = decision.DNSNames
	csr, err := CheckCSR(req.GetCsr(), caller, csrPolicy)
	if err != nil {
		return caller, tier, nil, stage("csr", err)
	}
	// Per identity the certificate is for (a node proxy asking for many
	// workloads is limited per workload), counted only once the caller has
	// authenticated and its CSR has passed, so that requests naming
	// identities they cannot have take no place in the table.
	if s.rate != nil && !s.rate.allow(caller.SPIFFEID, s.now()) {
		return caller, tier, nil, stage("rate", fmt.Errorf("%w: %s asks more often than its limit; retry later", ErrRateLimited, quote(caller.SPIFFEID)))
	}
	requested := time.Duration(req.GetValidityDuration()) * time.Second
	granted := decision.Tier.Grant(requested)
	id, err := url.Parse(caller.SPIFFEID)
	if err != nil {
		return caller, tier, nil, fmt.Errorf("caller identity %s: %w", quote(caller.SPIFFEID), err)
	}
	now := s.now()
	lr := issuer.LeafRequest{
		SPIFFEID: id, DNSNames: csr.DNSNames, PublicKey: csr.PublicKey, Now: now, TTL: granted, Cluster: caller.ClusterID,
	}
	if caller.ClientCert != nil {
		// A renewal re-keys but never extends: whoever holds a certificate
		// gets no longer life out of it than it has.
		lr.NotAfter = caller.ClientCert.NotAfter
	}
	tmpl, err := issuer.LeafTemplate(lr)
	if err != nil {
		return caller, tier, nil, err
	}
	issued, err := s.authority.SignLeaf(ctx, tmpl, csr.PublicKey)
	if err != nil {
		return caller, tier, nil, err
	}
	roots := s.authority.Roots()
	chain, err := s.verifyChain(issued, roots, caller.SPIFFEID, workloadUsages, now)
	if err != nil {
		return caller, tier, nil, err
	}
	err = s.recorder.RecordIssuance(ctx, &Issuance{
		Time: now, Caller: caller, Tier: tier,
		RequestedTTL: requested, GrantedTTL: issued.Cert.NotAfter.Sub(issued.Cert.NotBefore),
		Cert: issued.Cert, Issuer: issued.Issuer, RootKeyVersion: issued.RootKeyVersion,
	})
	if err != nil {
		return caller, tier, nil, fmt.Errorf("record issuance: %w", err)
	}
	s.metrics.issuances.WithLabelValues(tier, string(issued.Issuer.Mode)).Inc()
	return caller, tier, answer(issued, chain), nil
}

// verifyChain checks the new leaf against the current roots before anyone
// sees it, and returns the verified chain, whose PEM the answer carries.
// The full path validation (signatures, validity, constraints) runs once
// per intermediate and root set, and checks that the intermediate
// certifies the key that signs; after that a leaf needs no signature check
// of its own, because SignLeaf verified the signature it made with that
// same key under the intermediate's public key, only its issuer name,
// validity, key usages and SPIFFE ID.
func (s *Service) verifyChain(is *issuer.Issued, roots []*x509.Certificate, spiffeID string, usages []x509.ExtKeyUsage, now time.Time) (*verifiedChain, error) {
	leaf, in := is.Cert, is.Issuer.Cert
	v := s.chain.Load()
	if v != nil && v.issuer == in && slices.Equal(v.roots, roots) {
		if !bytes.Equal(leaf.RawIssuer, in.RawSubject) || !bytes.Equal(leaf.AuthorityKeyId, in.SubjectKeyId) {
			return nil, errors.New("issued certificate does not name its intermediate as issuer")
		}
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) || leaf.NotAfter.After(in.NotAfter) {
			return nil, fmt.Errorf("issued certificate is valid from %s to %s: not now, or beyond its intermediate", leaf.NotBefore, leaf.NotAfter)
		}
	} else {
		rp := x509.NewCertPool()
		for _, r := range roots {
			rp.AddCert(r)
		}
		ip := x509.NewCertPool()
		ip.AddCert(in)
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: rp, Intermediates: ip, CurrentTime: now, KeyUsages: usages,
		}); err != nil {
			return nil, fmt.Errorf("issued certificate does not verify against the roots: %w", err)
		}
		type equaler interface{ Equal(crypto.PublicKey) bool }
		if k, ok := in.PublicKey.(equaler); !ok || !k.Equal(is.Issuer.Signer.Public()) {
			return nil, errors.New("the intermediate's signer does not hold the intermediate's key")
		}
		v = newVerifiedChain(in, roots)
		s.chain.Store(v)
	}
	if len(in.ExtKeyUsage) != 0 {
		return nil, errors.New("the intermediate restricts extended key usage")
	}
	for _, u := range usages {
		if !slices.Contains(leaf.ExtKeyUsage, u) {
			return nil, fmt.Errorf("issued certificate lacks extended key usage %d", u)
		}
	}
	if spiffeID != "" && (len(leaf.URIs) != 1 || leaf.URIs[0].String() != spiffeID) {
		return nil, fmt.Errorf("issued certificate carries %v, not %s", leaf.URIs, spiffeID)
	}
	return v, nil
}

// What a certificate must be valid for: a workload's for both ends of
// mTLS, the CA's serving certificate for server auth only.
var (
	workloadUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	servingUsages  = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
)

// ServingTier is the tier recorded for the CA's own serving certificates.
const ServingTier = "serving"

// IssueServing issues the CA's own TLS serving certificate through the
// later stages of the pipeline, with the service's clock: build the
// issuer's serving template → sign → verify the chain against the roots →
// record (durably) → answer. There is no caller to authenticate and no CSR
// to check: the key is the CA's own, and the identity is r.SPIFFEID (may
// be nil). r.Now is ignored. If recording fails, no certificate is
// returned.
func (s *Service) IssueServing(ctx context.Context, r issuer.ServingRequest) (*issuer.Issued, error) {
	var id string
	if r.SPIFFEID != nil {
		id = r.SPIFFEID.String()
	}
	issued, _, err := s.issueSelf(ctx, id, ServingTier, r.TTL, servingUsages, r.PublicKey, func(now time.Time) (*x509.Certificate, error) {
		r.Now = now
		return issuer.ServingTemplate(r)
	})
	return issued, err
}

// DrillTier is the tier recorded for a drill's probe certificates, which
// live DrillProbeTTL.
const (
	DrillTier     = "drill"
	DrillProbeTTL = time.Hour
)

// IssueProbe issues a workload certificate for spiffeID and pub the way
// CreateCertificate does after authentication (the issuer's leaf template
// → sign → verify the chain → record), for a drill: it proves that the
// running daemon issues certificates that verify. It returns the roots the
// chain was checked against, the bundle a workload would receive.
func (s *Service) IssueProbe(ctx context.Context, spiffeID string, pub crypto.PublicKey, ttl time.Duration) (*issuer.Issued, []*x509.Certificate, error) {
	id, err := url.Parse(spiffeID)
	if err != nil || id.Scheme != "spiffe" {
		return nil, nil, fmt.Errorf("%w: probe identity %s is not a SPIFFE ID", ErrInvalidRequest, quote(spiffeID))
	}
	return s.issueSelf(ctx, spiffeID, DrillTier, ttl, workloadUsages, pub, func(now time.Time) (*x509.Certificate, error) {
		return issuer.LeafTemplate(issuer.LeafRequest{SPIFFEID: id, PublicKey: pub, Now: now, TTL: ttl})
	})
}

// IstiodTier is the tier recorded for istiod's serving certificates.
const IstiodTier = "istiod"

// IstiodRequest is istiod's serving certificate, which transitca writes to
// the istiod-tls Secret when istiod runs with ENABLE_CA_SERVER=false.
type IstiodRequest struct {
	// SPIFFEID is istiod's identity,
	// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
	SPIFFEID string
	// DNSNames are the names istiod is reached by: istiod.<ns>.svc, one
	// istiod-<revision>.<ns>.svc per revision, and any extra names.
	DNSNames []string
	// PublicKey is the key transitca generated for istiod.
	PublicKey crypto.PublicKey
	// TTL is the lifetime asked for; the privileged tier's max_ttl caps it.
	TTL time.Duration
}

// IssueIstiod issues istiod's serving certificate through the later stages
// of the pipeline, on the CA's own account, with the service's clock: the
// lifetime (r.TTL capped by the privileged tier, or by the tier the policy
// gives istiod's identity when no tier is named privileged) → the issuer's
// leaf template (the SPIFFE ID and the DNS names, serverAuth and
// clientAuth) → sign → verify the chain against the roots → record
// (durably, tier istiod, method self, under istiod's namespace and service
// account) → answer. It returns the roots the chain was checked against,
// the bundle istiod's clients trust. If recording fails, no certificate is
// returned.
func (s *Service) IssueIstiod(ctx context.Context, r IstiodRequest) (*issuer.Issued, []*x509.Certificate, error) {
	_, ns, sa, err := ParseSPIFFEID(r.SPIFFEID)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: istiod identity: %w", ErrInvalidRequest, err)
	}
	if len(r.DNSNames) == 0 {
		return nil, nil, fmt.Errorf("%w: istiod certificate needs at least one DNS name", ErrInvalidRequest)
	}
	for _, n := range r.DNSNames {
		if !spiffeid.ValidServiceAccount(n) { // a DNS subdomain, as a Service's name is
			return nil, nil, fmt.Errorf("%w: istiod DNS name %s is not a lowercase DNS name", ErrInvalidRequest, quote(n))
		}
	}
	id, err := url.Parse(r.SPIFFEID)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: istiod identity: %w", ErrInvalidRequest, err)
	}
	tier, ok := s.policy.Tiers[issuer.TierPrivileged]
	if !ok {
		tier = s.policy.Decide(r.SPIFFEID, ns, sa, "").Tier
	}
	granted := tier.Grant(r.TTL)
	return s.issueSelf(ctx, r.SPIFFEID, IstiodTier, r.TTL, workloadUsages, r.PublicKey, func(now time.Time) (*x509.Certificate, error) {
		return issuer.LeafTemplate(issuer.LeafRequest{SPIFFEID: id, DNSNames: r.DNSNames, PublicKey: r.PublicKey, Now: now, TTL: granted})
	})
}

// issueSelf runs template → sign → verify the chain → record for a
// certificate the CA issues on its own account. A workload identity
// (spiffe://…/ns/<ns>/sa/<sa>) is recorded with its namespace and service
// account, so that the log's namespace index finds it.
func (s *Service) issueSelf(ctx context.Context, id, tier string, ttl time.Duration, usages []x509.ExtKeyUsage, pub crypto.PublicKey,
	template func(now time.Time) (*x509.Certificate, error)) (*issuer.Issued, []*x509.Certificate, error) {
	now := s.now()
	tmpl, err := template(now)
	if err != nil {
		return nil, nil, err
	}
	issued, err := s.authority.SignLeaf(ctx, tmpl, pub)
	if err != nil {
		return nil, nil, err
	}
	roots := s.authority.Roots()
	if _, err := s.verifyChain(issued, roots, id, usages, now); err != nil {
		return nil, nil, err
	}
	caller := &Caller{SPIFFEID: id, Method: AuthSelf}
	if _, ns, sa, err := ParseSPIFFEID(id); err == nil {
		caller.Namespace, caller.ServiceAccount = ns, sa
	}
	err = s.recorder.RecordIssuance(ctx, &Issuance{
		Time: now, Caller: caller, Tier: tier,
		RequestedTTL: ttl, GrantedTTL: issued.Cert.NotAfter.Sub(issued.Cert.NotBefore),
		Cert: issued.Cert, Issuer: issued.Issuer, RootKeyVersion: issued.RootKeyVersion,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("record %s certificate: %w", tier, err)
	}
	s.metrics.issuances.WithLabelValues(tier, string(issued.Issuer.Mode)).Inc()
	return issued, roots, nil
}

// answer is the chain istio-agent expects: leaf, intermediate, and the root
// bundle (every trusted root) as the last element.
func answer(is *issuer.Issued, chain *verifiedChain) []string {
	return []string{string(pemCert(is.Cert)), chain.issuerPEM, chain.bundle}
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// stageError records in which pipeline step a request failed, for the
// rejection metric.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

func stage(name string, err error) error { return &stageError{stage: name, err: err} }

func rejectionReason(err error, code codes.Code) string {
	st := "issue"
	var se *stageError
	if errors.As(err, &se) {
		st = se.stage
	}
	switch code {
	case codes.Unauthenticated:
		return st + "_unauthenticated"
	case codes.PermissionDenied:
		return st + "_permission_denied"
	case codes.InvalidArgument:
		return st + "_invalid"
	case codes.ResourceExhausted:
		return st + "_resource_exhausted"
	case codes.Unavailable:
		return st + "_unavailable"
	case codes.Canceled, codes.DeadlineExceeded:
		return "canceled"
	}
	return st + "_internal"
}

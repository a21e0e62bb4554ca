package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/transitca/transitca/internal/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the request metadata key under which a node
// agent (ztunnel, in Istio's ambient mode) names the identity it asks a
// certificate for on behalf of a pod on its node, as Istio's own CA reads
// it (istio.io/istio/pkg/security.ImpersonatedIdentity).
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// PodInfo is what node authorization needs to know of a pod.
type PodInfo struct {
	UID            string
	ServiceAccount string
	Node           string
}

// NodePods is one cluster's view of its pods, kept current by an informer.
// Pods that have terminated (phase Succeeded or Failed) are not in it, nor
// are pods being deleted whose grace period has run out (their
// deletionTimestamp has passed).
type NodePods interface {
	// Pod returns the pod namespace/name, or false when there is none.
	Pod(namespace, name string) (PodInfo, bool)
	// ServiceAccountOnNode reports whether a pod that runs as the service
	// account namespace/serviceAccount is bound to node.
	ServiceAccountOnNode(node, namespace, serviceAccount string) bool
	// HasSynced reports whether the view has been filled once.
	HasSynced() bool
}

// NodeAuthorizer decides whether a node agent may ask for a certificate
// in the name of another identity. It follows Istio's own CA
// (CA_TRUSTED_NODE_ACCOUNTS): the caller's service account must be one of
// the trusted node accounts, the pod its token is bound to must exist with
// that UID and service account, and a pod that runs as the requested
// identity must be on the caller's pod's node, in the caller's cluster.
type NodeAuthorizer struct {
	trusted  []string            // "<namespace>/<service-account>"
	clusters map[string]NodePods // by cluster ID
}

// NewNodeAuthorizer returns a NodeAuthorizer for the trusted node accounts
// ("<namespace>/<service-account>", e.g. istio-system/ztunnel) and each
// cluster's pods.
func NewNodeAuthorizer(trusted []string, clusters map[string]NodePods) (*NodeAuthorizer, error) {
	if len(trusted) == 0 {
		return nil, errors.New("node authorizer: no trusted node accounts")
	}
	for _, t := range trusted {
		if err := ValidNodeAccount(t); err != nil {
			return nil, fmt.Errorf("node authorizer: %w", err)
		}
	}
	if len(clusters) == 0 {
		return nil, errors.New("node authorizer: no cluster's pods to check impersonation against")
	}
	return &NodeAuthorizer{trusted: slices.Clone(trusted), clusters: clusters}, nil
}

// ValidNodeAccount checks a trusted node account: "<namespace>/<service-account>".
func ValidNodeAccount(s string) error {
	ns, sa, ok := strings.Cut(s, "/")
	if !ok || !spiffeid.ValidNamespace(ns) || !spiffeid.ValidServiceAccount(sa) {
		return fmt.Errorf("trusted node account %s is not <namespace>/<service-account>", quote(s))
	}
	return nil
}

// impersonatedIdentity returns the ImpersonatedIdentity of a request's
// metadata, "" when there is none. A value that is not a string is a
// malformed request.
func impersonatedIdentity(req *pb.IstioCertificateRequest) (string, error) {
	v, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]
	if !ok {
		return "", nil
	}
	str, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", fmt.Errorf("%w: metadata %s is not a string", ErrInvalidRequest, ImpersonatedIdentityKey)
	}
	return str.StringValue, nil
}

// Impersonate checks that caller may ask for identity and returns the
// caller the certificate is then issued to: identity's SPIFFE ID,
// namespace and service account, with Impersonator naming caller and the
// credential fields (method, subject, cluster, pod) still caller's. When it
// refuses, it still returns that caller if identity is a well-formed
// SPIFFE ID, so that the denial records both identities; otherwise nil.
// A refusal wraps ErrPermissionDenied, a malformed identity
// ErrInvalidRequest, and pods not yet listed ErrUnavailable.
func (a *NodeAuthorizer) Impersonate(caller *Caller, identity string) (*Caller, error) {
	td, ns, sa, err := ParseSPIFFEID(identity)
	if err != nil {
		return nil, fmt.Errorf("%w: impersonated identity: %w", ErrInvalidRequest, err)
	}
	w := *caller
	w.SPIFFEID, w.Namespace, w.ServiceAccount, w.Impersonator = identity, ns, sa, caller.SPIFFEID
	if a == nil {
		return &w, fmt.Errorf("%w: %s asks for %s, but impersonation is off (auth.trusted_node_accounts is empty)", ErrPermissionDenied, caller.SPIFFEID, identity)
	}
	if !slices.Contains(a.trusted, caller.Namespace+"/"+caller.ServiceAccount) {
		return &w, fmt.Errorf("%w: %s asks for %s, but %s/%s is not a trusted node account", ErrPermissionDenied,
			caller.SPIFFEID, identity, caller.Namespace, caller.ServiceAccount)
	}
	if callerTD, _, _, err := ParseSPIFFEID(caller.SPIFFEID); err != nil || callerTD != td {
		return &w, fmt.Errorf("%w: %s asks for %s, outside its trust domain", ErrPermissionDenied, caller.SPIFFEID, identity)
	}
	node, err := a.callerNode(caller)
	if err != nil {
		return &w, fmt.Errorf("%s asks for %s: %w", caller.SPIFFEID, identity, err)
	}
	w.Node = node
	if !a.clusters[caller.ClusterID].ServiceAccountOnNode(node, ns, sa) {
		return &w, fmt.Errorf("%w: %s asks for %s, but no pod of service account %s/%s runs on its node %s in cluster %s",
			ErrPermissionDenied, caller.SPIFFEID, identity, ns, sa, quote(node), quote(caller.ClusterID))
	}
	return &w, nil
}

// callerNode returns the node of the pod the caller's token is bound to,
// after checking that the pod is there, is the one the token names (its
// UID) and runs as the caller.
func (a *NodeAuthorizer) callerNode(caller *Caller) (string, error) {
	if caller.PodName == "" || caller.PodUID == "" {
		return "", fmt.Errorf("%w: its credential is not bound to a pod (%s), so its node is unknown", ErrPermissionDenied, caller.Method)
	}
	pods, ok := a.clusters[caller.ClusterID]
	if !ok {
		return "", fmt.Errorf("%w: no pods are watched in cluster %s", ErrPermissionDenied, quote(caller.ClusterID))
	}
	if !pods.HasSynced() {
		return "", fmt.Errorf("%w: the pods of cluster %s are not listed yet", ErrUnavailable, quote(caller.ClusterID))
	}
	p, ok := pods.Pod(caller.Namespace, caller.PodName)
	switch {
	case !ok:
		return "", fmt.Errorf("%w: its pod %s/%s is not running in cluster %s", ErrPermissionDenied, caller.Namespace, caller.PodName, quote(caller.ClusterID))
	case p.UID != caller.PodUID:
		return "", fmt.Errorf("%w: its pod %s/%s has uid %s, not the token's %s", ErrPermissionDenied, caller.Namespace, caller.PodName, p.UID, quote(caller.PodUID))
	case p.ServiceAccount != caller.ServiceAccount:
		return "", fmt.Errorf("%w: its pod %s/%s runs as %s, not %s", ErrPermissionDenied, caller.Namespace, caller.PodName, quote(p.ServiceAccount), caller.ServiceAccount)
	case p.Node == "":
		return "", fmt.Errorf("%w: its pod %s/%s is on no node", ErrPermissionDenied, caller.Namespace, caller.PodName)
	}
	return p.Node, nil
}

// impersonate returns the caller a certificate is issued to: the caller
// itself or, when the request names an ImpersonatedIdentity, that identity
// if the node authorizer allows it and it is not protected
// (checkImpersonation). When it refuses it returns the caller
// to record, which names both identities if the requested one parses.
func (s *Service) impersonate(ctx context.Context, req *pb.IstioCertificateRequest, caller *Caller) (*Caller, error) {
	id, err := impersonatedIdentity(req)
	if err != nil || id == "" {
		return caller, err
	}
	w, err := s.nodes.Impersonate(caller, id)
	if err == nil {
		err = s.checkImpersonation(w)
	}
	if err != nil {
		s.log.WarnContext(ctx, "impersonation refused", slog.String("caller", caller.SPIFFEID),
			slog.String("identity", quote(id)), slog.String("cluster", caller.ClusterID), slog.Any("error", err))
		if w == nil {
			return caller, err
		}
		return w, err
	}
	s.log.DebugContext(ctx, "impersonation allowed", slog.String("caller", caller.SPIFFEID),
		slog.String("identity", id), slog.String("cluster", caller.ClusterID), slog.String("node", w.Node))
	return w, nil
}

// podFromClaims returns the pod a projected service-account token is bound
// to (its kubernetes.io pod claim), or "" when it is bound to none. A
// malformed claim refuses the token.
func podFromClaims(kube *kubernetesClaims) (name, uid string, err error) {
	if kube.Kubernetes == nil || kube.Kubernetes.Pod == nil {
		return "", "", nil
	}
	p := kube.Kubernetes.Pod
	if !validPodName(p.Name) || !validPodUID(p.UID) {
		return "", "", fmt.Errorf("%w: token kubernetes.io pod claim is malformed: name %s, uid %s", ErrUnauthenticated, quote(p.Name), quote(p.UID))
	}
	return p.Name, p.UID, nil
}

package ca

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/transitca/transitca/issuer"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
)

// AdminRole is what a caller of the admin API may do.
type AdminRole int

// The roles, from none to all.
const (
	// AdminNone is an identity that is not an admin identity: it may call
	// nothing.
	AdminNone AdminRole = iota
	// AdminReader may call the read-only methods (IsReadOnlyAdminMethod):
	// the security team's.
	AdminReader
	// AdminOperator may call every method, those that change the CA
	// (rotation, revocation, drills) included.
	AdminOperator
)

// String names the role as the configuration does.
func (r AdminRole) String() string {
	switch r {
	case AdminReader:
		return "reader"
	case AdminOperator:
		return "operator"
	}
	return "none"
}

// readOnlyAdminMethods are the admin methods that change nothing of the
// CA: the log's queries, entries, checkpoints (GetCheckpoint may sign a
// checkpoint of the entries already appended, as the daemon does on its
// own schedule; it changes no entry), proofs, verification and backups,
// and the CA's status. Every other method, and any method added later,
// is an operator's.
var readOnlyAdminMethods = map[string]bool{
	adminv1.AdminService_QueryLog_FullMethodName:            true,
	adminv1.AdminService_GetEntry_FullMethodName:            true,
	adminv1.AdminService_GetCheckpoint_FullMethodName:       true,
	adminv1.AdminService_GetInclusionProof_FullMethodName:   true,
	adminv1.AdminService_GetConsistencyProof_FullMethodName: true,
	adminv1.AdminService_VerifyLog_FullMethodName:           true,
	adminv1.AdminService_Backup_FullMethodName:              true,
	adminv1.AdminService_Status_FullMethodName:              true,
}

// IsReadOnlyAdminMethod reports whether a reader may call the admin
// method fullMethod ("/transitca.admin.v1.AdminService/QueryLog").
func IsReadOnlyAdminMethod(fullMethod string) bool { return readOnlyAdminMethods[fullMethod] }

// AdminRoles says who may call the admin API and in which role, and to
// callers of which clusters an admin identity may be issued.
type AdminRoles struct {
	// Operators are the SPIFFE IDs of operators (admin.identities).
	Operators []string
	// Readers are the SPIFFE IDs of readers (admin.readers).
	Readers []string
	// Clusters are the cluster IDs whose callers may be issued a
	// certificate for an admin identity (admin.clusters, by default the
	// CA's own cluster); empty means none may.
	Clusters []string
}

// Role returns the role of the SPIFFE ID id; a nil AdminRoles gives none.
func (r *AdminRoles) Role(id string) AdminRole {
	switch {
	case r == nil:
		return AdminNone
	case slices.Contains(r.Operators, id):
		return AdminOperator
	case slices.Contains(r.Readers, id):
		return AdminReader
	}
	return AdminNone
}

// authorize checks that the authenticated caller may call the admin
// method fullMethod. A refusal wraps ErrPermissionDenied and names the
// role the caller has.
func (r *AdminRoles) authorize(caller *Caller, fullMethod string) error {
	if err := r.checkCertCluster(caller); err != nil {
		return err
	}
	switch r.Role(caller.SPIFFEID) {
	case AdminOperator:
		return nil
	case AdminReader:
		if IsReadOnlyAdminMethod(fullMethod) {
			return nil
		}
		return fmt.Errorf("%w: %s is a reader (admin.readers): %s changes the CA and needs an operator (admin.identities)",
			ErrPermissionDenied, caller.SPIFFEID, fullMethod[strings.LastIndex(fullMethod, "/")+1:])
	}
	return fmt.Errorf("%w: %s is not an admin identity", ErrPermissionDenied, caller.SPIFFEID)
}

// checkCertCluster refuses an admin caller whose certificate was issued
// for a cluster not in Clusters (one issued before admin.clusters was
// enforced). The CertAuthenticator sets caller.ClusterID from the
// certificate (its cluster extension, or the CA's own cluster for a
// certificate without one); issuance (checkIssuance) is what keeps such
// certificates from being issued in the first place.
func (r *AdminRoles) checkCertCluster(caller *Caller) error {
	if caller.ClusterID == "" || r.Role(caller.SPIFFEID) == AdminNone || slices.Contains(r.Clusters, caller.ClusterID) {
		return nil
	}
	return fmt.Errorf("%w: the certificate of %s was issued for cluster %s, which may not hold an admin identity (admin.clusters: %s)",
		ErrPermissionDenied, caller.SPIFFEID, quote(caller.ClusterID), strings.Join(r.Clusters, ", "))
}

// checkIssuance refuses to issue an admin identity to a caller of a
// cluster not in Clusters: a token minted in another cluster for the
// admin's service account does not make an admin. The caller's cluster is
// that of the verifier that accepted its token (or, for a client
// certificate, the cluster it is judged as).
func (r *AdminRoles) checkIssuance(caller *Caller) error {
	role := r.Role(caller.SPIFFEID)
	if role == AdminNone || slices.Contains(r.Clusters, caller.ClusterID) {
		return nil
	}
	allowed := "none (admin.clusters is empty)"
	if len(r.Clusters) > 0 {
		allowed = strings.Join(r.Clusters, ", ")
	}
	return fmt.Errorf("%w: %s is an admin identity (%s), issued only to callers of the clusters of admin.clusters (%s), not of cluster %s",
		ErrPermissionDenied, caller.SPIFFEID, role, allowed, quote(caller.ClusterID))
}

// Protected are the identities a node agent is not issued by
// impersonation (ImpersonatedIdentity) unless Allow names them: the admin
// identities (ServiceOptions.Admin), istiod's, and those the policy puts
// in the privileged tier. A node agent vouches only that a pod runs as the
// identity on its node; these identities are worth more than that.
type Protected struct {
	// Istiod are istiod's SPIFFE IDs.
	Istiod []string
	// Allow are SPIFFE ID patterns (path.Match syntax) of protected
	// identities node agents may still be issued
	// (auth.allow_protected_impersonation).
	Allow []string
}

// validate checks the patterns of Allow.
func (p Protected) validate() error {
	for _, pat := range p.Allow {
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("protected identities: pattern %q: %w", pat, err)
		}
	}
	return nil
}

// checkImpersonation refuses to issue a protected identity to a node agent
// that asks for it by impersonation (w.Impersonator is set), unless
// protected.Allow names it.
func (s *Service) checkImpersonation(w *Caller) error {
	var what string
	switch {
	case w.Impersonator == "":
		return nil
	case s.admin.Role(w.SPIFFEID) != AdminNone:
		what = "an admin identity"
	case slices.Contains(s.protected.Istiod, w.SPIFFEID):
		what = "istiod's identity"
	case s.policy.Decide(w.SPIFFEID, w.Namespace, w.ServiceAccount, w.ClusterID).Tier.Name == issuer.TierPrivileged:
		what = "an identity of the " + issuer.TierPrivileged + " tier"
	default:
		return nil
	}
	for _, pat := range s.protected.Allow {
		if ok, _ := path.Match(pat, w.SPIFFEID); ok {
			return nil
		}
	}
	return fmt.Errorf("%w: %s asks for %s, %s: a node agent is issued a protected identity only if auth.allow_protected_impersonation names it",
		ErrPermissionDenied, w.Impersonator, w.SPIFFEID, what)
}

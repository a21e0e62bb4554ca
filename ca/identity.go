package ca

import "crypto/x509"

// AuthMethod names how a caller proved its identity. It is recorded with every
// issuance.
type AuthMethod string

// The ways a caller can authenticate.
const (
	AuthTokenReview AuthMethod = "kubernetes-tokenreview"
	AuthJWT         AuthMethod = "jwt"
	AuthClientCert  AuthMethod = "client-certificate"
	// AuthSelf is the CA itself, for the certificates it issues for its own
	// use (its TLS serving certificate).
	AuthSelf AuthMethod = "self"
)

// Caller is an authenticated workload: who it is and how it proved it.
type Caller struct {
	// SPIFFEID is spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
	SPIFFEID       string
	Namespace      string
	ServiceAccount string
	// ClusterID is the cluster the caller belongs to, one of the configured
	// clusters: the one its client certificate was issued for, or the one
	// its clusterid header names for a token.
	ClusterID string
	// Method is how the caller authenticated.
	Method AuthMethod
	// Subject is the credential's own subject: the token's "sub" claim, or
	// the client certificate's serial number in hex.
	Subject string
	// ClientCert is the client certificate the caller authenticated with
	// (Method AuthClientCert), nil otherwise, and ClientCertIssuer the hex
	// SHA-256 of the CA certificate that signed it.
	ClientCert       *x509.Certificate
	ClientCertIssuer string
	// PodName and PodUID name the pod the caller's token is bound to, as the
	// Kubernetes TokenReview API reported it (the user's extra fields
	// authentication.kubernetes.io/pod-name and pod-uid) or, for a token
	// checked offline, its kubernetes.io pod claim. Empty for client
	// certificates and for tokens bound to no pod.
	PodName string
	PodUID  string
	// Impersonator is the SPIFFE ID of the node agent (ztunnel) that
	// authenticated and asked for this identity with ImpersonatedIdentity;
	// empty when the caller asked for its own. Method, Subject, ClusterID,
	// PodName and PodUID then describe the node agent's credential, and
	// Node is the node its pod runs on.
	Impersonator string
	Node         string
}

// CallerID is the identity that authenticated: the impersonator when there
// is one, else the SPIFFE ID.
func (c *Caller) CallerID() string {
	if c.Impersonator != "" {
		return c.Impersonator
	}
	return c.SPIFFEID
}

package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/transitca/transitca/internal/loop"
	"github.com/transitca/transitca/issuer"
)

// ServingCert is the TLS certificate transitca serves gRPC with. transitca
// issues it to itself through its own certificate service
// (Service.IssueServing: the issuer's template, the chain check, the
// issuance log), for the configured DNS names and IP addresses, and renews
// it at half-life (or when the intermediate changes) with no restart.
type ServingCert struct {
	svc      *Service
	spiffeID *url.URL
	dnsNames []string
	ips      []net.IP
	ttl      time.Duration
	log      *slog.Logger

	mu   sync.RWMutex
	cert *tls.Certificate
	leaf *x509.Certificate
	from string // fingerprint of the intermediate that signed leaf
}

// ServingCertOptions configure a ServingCert.
type ServingCertOptions struct {
	// SPIFFEID, when set, is the CA's own identity, carried as a URI SAN
	// and recorded in the issuance log.
	SPIFFEID    string
	DNSNames    []string
	IPAddresses []net.IP
	TTL         time.Duration
	Logger      *slog.Logger
}

// NewServingCert issues the first serving certificate through svc.
func NewServingCert(ctx context.Context, svc *Service, o ServingCertOptions) (*ServingCert, error) {
	if len(o.DNSNames) == 0 && len(o.IPAddresses) == 0 {
		return nil, errors.New("serving certificate needs at least one DNS name or IP address")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &ServingCert{svc: svc, dnsNames: o.DNSNames, ips: o.IPAddresses, ttl: o.TTL, log: o.Logger}
	if o.SPIFFEID != "" {
		u, err := url.Parse(o.SPIFFEID)
		if err != nil || u.Scheme != "spiffe" {
			return nil, fmt.Errorf("serving certificate identity %q is not a SPIFFE ID", o.SPIFFEID)
		}
		s.spiffeID = u
	}
	if err := s.Renew(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Renew issues a fresh serving certificate and key. On error the current
// certificate stays in use.
func (s *ServingCert) Renew(ctx context.Context) error {
	key, err := issuer.GenerateKey(issuer.KeyECDSAP256)
	if err != nil {
		return err
	}
	is, err := s.svc.IssueServing(ctx, issuer.ServingRequest{
		DNSNames: s.dnsNames, IPAddresses: s.ips, SPIFFEID: s.spiffeID, PublicKey: key.Public(), TTL: s.ttl,
	})
	if err != nil {
		return fmt.Errorf("issue serving certificate: %w", err)
	}
	cert := &tls.Certificate{
		Certificate: [][]byte{is.Cert.Raw, is.Issuer.Cert.Raw},
		PrivateKey:  key,
		Leaf:        is.Cert,
	}
	s.mu.Lock()
	s.cert, s.leaf, s.from = cert, is.Cert, is.Issuer.Fingerprint
	s.mu.Unlock()
	s.log.InfoContext(ctx, "serving certificate issued",
		slog.Any("dns_names", s.dnsNames), slog.Any("ip_addresses", s.ips), slog.Time("not_after", is.Cert.NotAfter))
	return nil
}

// GetCertificate serves the current certificate; it fits
// tls.Config.GetCertificate.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert, nil
}

// Leaf returns the current serving certificate.
func (s *ServingCert) Leaf() *x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leaf
}

func (s *ServingCert) due() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.svc.now().Before(issuer.HalfLife(s.leaf)) || s.from != s.svc.authority.Intermediate().Fingerprint
}

// RenewIfDue renews the certificate if it is past half its life or its
// issuing intermediate is no longer the current one.
func (s *ServingCert) RenewIfDue(ctx context.Context) error {
	if !s.due() {
		return nil
	}
	return s.Renew(ctx)
}

// Run renews the certificate when it passes half its life or the issuing
// intermediate changes, until ctx ends.
func (s *ServingCert) Run(ctx context.Context, every time.Duration) {
	loop.Every(ctx, every, func(ctx context.Context) {
		if err := s.RenewIfDue(ctx); err != nil {
			s.log.ErrorContext(ctx, "renew serving certificate", slog.Any("error", err))
		}
	})
}

// TLSConfig returns the server TLS configuration: TLS 1.3 by default; with
// minVersion tls.VersionTLS12, only ECDHE key exchange with AEAD ciphers.
// Client certificates are requested, not required: the authenticator
// checks them against the current roots.
func TLSConfig(s *ServingCert, minVersion uint16) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     minVersion,
		GetCertificate: s.GetCertificate,
		ClientAuth:     tls.RequestClientCert,
		NextProtos:     []string{"h2"},
	}
	if minVersion < tls.VersionTLS13 {
		cfg.MinVersion = tls.VersionTLS12
		cfg.CipherSuites = []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		}
	}
	return cfg
}

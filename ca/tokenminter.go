package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/transitca/transitca/internal/spiffeid"
)

// TokenMinter issues tokens shaped like projected Kubernetes service-account
// tokens. It serves development mode and tests; production tokens come from
// the Kubernetes API server.
type TokenMinter struct {
	// Now returns the time tokens are stamped with. Nil means time.Now.
	Now func() time.Time

	signer jose.Signer
	public jose.JSONWebKey
	issuer string
}

// NewTokenMinter returns a minter that signs with signer (RSA of at least
// 2048 bits: RS256; ECDSA P-256: ES256; ECDSA P-384: ES384) under key id kid,
// as issuer.
func NewTokenMinter(signer crypto.Signer, kid, issuer string) (*TokenMinter, error) {
	var alg jose.SignatureAlgorithm
	switch pub := signer.Public().(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < 2048 {
			return nil, fmt.Errorf("token minter: RSA-%d key is too small; use at least 2048 bits", pub.N.BitLen())
		}
		alg = jose.RS256
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		default:
			return nil, fmt.Errorf("token minter: ECDSA %s is not supported; use P-256 or P-384", pub.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("token minter: %T keys are not supported", pub)
	}
	if issuer == "" {
		return nil, errors.New("token minter: issuer is empty")
	}
	public := jose.JSONWebKey{Key: signer.Public(), KeyID: kid, Algorithm: string(alg), Use: "sig"}
	js, err := jose.NewSigner(jose.SigningKey{
		Algorithm: alg,
		Key:       kidSigner{OpaqueSigner: cryptosigner.Opaque(signer), public: public},
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("token minter: %w", err)
	}
	return &TokenMinter{signer: js, public: public, issuer: issuer}, nil
}

// kidSigner makes go-jose put the key id in the header it signs.
type kidSigner struct {
	jose.OpaqueSigner
	public jose.JSONWebKey
}

func (s kidSigner) Public() *jose.JSONWebKey { return &s.public }

// mintedClaims is the payload of a minted token.
type mintedClaims struct {
	jwt.Claims
	Kubernetes mintedKubernetes `json:"kubernetes.io"`
}

type mintedKubernetes struct {
	Namespace      string        `json:"namespace"`
	ServiceAccount mintedNameUID `json:"serviceaccount"`
}

type mintedNameUID struct {
	Name string `json:"name"`
}

// Mint returns a token for service account sa in namespace ns, for the
// given audiences, valid for ttl from now.
func (m *TokenMinter) Mint(ns, sa string, audiences []string, ttl time.Duration) (string, error) {
	if !spiffeid.ValidNamespace(ns) || !spiffeid.ValidServiceAccount(sa) {
		return "", fmt.Errorf("mint token: %q/%q is not a valid namespace and service account", ns, sa)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("mint token: ttl %s is not positive", ttl)
	}
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	t := now()
	claims := mintedClaims{
		Claims: jwt.Claims{
			Issuer:    m.issuer,
			Subject:   serviceAccountPrefix + ns + ":" + sa,
			Audience:  jwt.Audience(audiences),
			Expiry:    jwt.NewNumericDate(t.Add(ttl)),
			NotBefore: jwt.NewNumericDate(t),
			IssuedAt:  jwt.NewNumericDate(t),
		},
		Kubernetes: mintedKubernetes{Namespace: ns, ServiceAccount: mintedNameUID{Name: sa}},
	}
	token, err := jwt.Signed(m.signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return token, nil
}

// JWKS returns the public key that verifies minted tokens, as a key set.
func (m *TokenMinter) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{m.public}}
}

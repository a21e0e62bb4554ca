package issuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strconv"
	"sync"
	"time"
)

// Mode is where the issuing intermediate's key lives.
type Mode string

// The intermediate modes.
const (
	// ModeMemory: an ECDSA P-256 key generated at start and never written
	// to disk; issuance needs no Vault round trip.
	ModeMemory Mode = "memory"
	// ModeVault: the intermediate key is a Transit key; every leaf is signed
	// in Vault.
	ModeVault Mode = "vault"
)

// Defaults for Options.
const (
	DefaultRootKey         = "transitca-root"
	DefaultIntermediateKey = "transitca-intermediate"
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateTTL = 60 * 24 * time.Hour
)

// Options configure the CA hierarchy.
type Options struct {
	RootKey             string  // Transit key name of the root; DefaultRootKey when empty
	RootKeyType         KeyType // KeyECDSAP256 when empty
	IntermediateKey     string  // Transit key name in ModeVault; DefaultIntermediateKey when empty
	IntermediateKeyType KeyType // in ModeVault; KeyECDSAP256 when empty
	Mode                Mode    // ModeMemory when empty
	Organization        string  // subject O of CA certificates; "transitca" when empty
	RootTTL             time.Duration
	// IntermediateTTL is the intermediate's lifetime. It is renewed at half
	// of it, so it should be at least twice the longest leaf TTL.
	IntermediateTTL time.Duration
	// Dev labels every CA certificate DEV-ONLY.
	Dev bool
	// OnIntermediate, when set, is told of every intermediate before it is
	// put to use (for the issuance log); an error keeps the previous one in
	// use (or fails Open).
	OnIntermediate func(ctx context.Context, in *Intermediate) error
	Now            func() time.Time
	Logger         *slog.Logger
}

func (o *Options) defaults() {
	if o.RootKey == "" {
		o.RootKey = DefaultRootKey
	}
	if o.RootKeyType == "" {
		o.RootKeyType = KeyECDSAP256
	}
	if o.IntermediateKey == "" {
		o.IntermediateKey = DefaultIntermediateKey
	}
	if o.IntermediateKeyType == "" {
		o.IntermediateKeyType = KeyECDSAP256
	}
	if o.Mode == "" {
		o.Mode = ModeMemory
	}
	if o.Organization == "" {
		o.Organization = "transitca"
	}
	if o.RootTTL <= 0 {
		o.RootTTL = DefaultRootTTL
	}
	if o.IntermediateTTL <= 0 {
		o.IntermediateTTL = DefaultIntermediateTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

func (o *Options) validate() error {
	if !o.RootKeyType.Valid() || o.RootKeyType == KeyEd25519 {
		return fmt.Errorf("root key type %q: want one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096", o.RootKeyType)
	}
	if o.Mode != ModeMemory && o.Mode != ModeVault {
		return fmt.Errorf("intermediate mode %q: want %q or %q", o.Mode, ModeMemory, ModeVault)
	}
	if o.Mode == ModeVault && (!o.IntermediateKeyType.Valid() || o.IntermediateKeyType == KeyEd25519) {
		return fmt.Errorf("intermediate key type %q: want one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096", o.IntermediateKeyType)
	}
	if o.IntermediateTTL >= o.RootTTL {
		return fmt.Errorf("intermediate TTL %v must be shorter than the root TTL %v", o.IntermediateTTL, o.RootTTL)
	}
	return nil
}

func (o *Options) name(cn string) pkix.Name {
	org := o.Organization
	if o.Dev {
		cn = DevOnlyLabel + " " + cn
		org = DevOnlyLabel + " " + org
	}
	return pkix.Name{CommonName: cn, Organization: []string{org}}
}

func rootCertName(key string, version int) string {
	return "root/" + key + "/v" + strconv.Itoa(version)
}

func intermediateCertName(key string, version int) string {
	return "intermediate/" + key + "/v" + strconv.Itoa(version)
}

// InitResult says what Init did.
type InitResult struct {
	KeyCreated             bool // the root key was created
	RootCreated            bool // the root certificate was created
	IntermediateKeyCreated bool // ModeVault: the intermediate key was created
	Root                   *x509.Certificate
	RootKeyVersion         int
}

// Init makes the CA ready, idempotently: it creates the non-exportable root
// key unless it exists, builds the self-signed root certificate through the
// key store unless one is stored for the key's latest version, and in
// ModeVault creates the intermediate key. Running it again changes nothing.
func Init(ctx context.Context, keys Keys, certs Certs, o Options) (*InitResult, error) {
	o.defaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	res := &InitResult{}
	var err error
	if res.KeyCreated, err = keys.EnsureKey(ctx, o.RootKey, o.RootKeyType); err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	signer, err := keys.Signer(ctx, o.RootKey, 0)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	res.RootKeyVersion = signer.KeyVersion()
	name := rootCertName(o.RootKey, signer.KeyVersion())
	root, _, err := certs.Load(ctx, name)
	switch {
	case err == nil:
		if err := matchesKey(root, signer.Public()); err != nil {
			return nil, fmt.Errorf("stored root certificate %s: %w", name, err)
		}
	case errors.Is(err, ErrCertNotFound):
		root, err = selfSign(ctx, signer, &o)
		if err != nil {
			return nil, err
		}
		root, res.RootCreated, err = certs.Store(ctx, name, root, 0)
		if err != nil {
			return nil, fmt.Errorf("store root certificate: %w", err)
		}
	default:
		return nil, err
	}
	res.Root = root
	if o.Mode == ModeVault {
		if res.IntermediateKeyCreated, err = keys.EnsureKey(ctx, o.IntermediateKey, o.IntermediateKeyType); err != nil {
			return nil, fmt.Errorf("intermediate key: %w", err)
		}
	}
	return res, nil
}

func selfSign(ctx context.Context, signer KeySigner, o *Options) (*x509.Certificate, error) {
	notBefore, notAfter := Validity(o.Now(), o.RootTTL)
	tmpl := &x509.Certificate{
		Subject:               o.name("transitca root CA"),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		SubjectKeyId:          keyID(signer.Public()),
	}
	cert, err := createCert(ctx, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("self-sign root with key %s version %d: %w", signer.KeyName(), signer.KeyVersion(), err)
	}
	return cert, nil
}

// Intermediate is an issuing CA certificate and the signer for its key.
type Intermediate struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
	Mode   Mode
	// KeyVersion is the Transit key version in ModeVault, 0 in ModeMemory.
	KeyVersion int
	// Fingerprint is the hex SHA-256 of Cert.Raw.
	Fingerprint string
	// RenewAt is when the intermediate is past half its life.
	RenewAt time.Time
}

// Authority is a running CA: the root, the trust bundle and the current
// issuing intermediate.
type Authority struct {
	keys  Keys
	certs Certs
	o     Options
	root  *x509.Certificate
	rootV int
	rootS KeySigner

	mu  sync.RWMutex
	cur *Intermediate
}

// Open loads the root certificate for the root key's latest version (run
// Init first: Open returns an error wrapping ErrNotInitialized otherwise)
// and sets up an issuing intermediate.
func Open(ctx context.Context, keys Keys, certs Certs, o Options) (*Authority, error) {
	o.defaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	signer, err := keys.Signer(ctx, o.RootKey, 0)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: root key %s does not exist (%s); run \"ca init\"", ErrNotInitialized, o.RootKey, keys.Describe())
	}
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	name := rootCertName(o.RootKey, signer.KeyVersion())
	root, _, err := certs.Load(ctx, name)
	if errors.Is(err, ErrCertNotFound) {
		return nil, fmt.Errorf("%w: no root certificate for key %s version %d; run \"ca init\"", ErrNotInitialized, o.RootKey, signer.KeyVersion())
	}
	if err != nil {
		return nil, err
	}
	if err := matchesKey(root, signer.Public()); err != nil {
		return nil, fmt.Errorf("stored root certificate %s: %w", name, err)
	}
	a := &Authority{keys: keys, certs: certs, o: o, root: root, rootV: signer.KeyVersion(), rootS: signer}
	if err := a.Renew(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// Root returns the root certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// RootKeyVersion returns the root key version the current root was made with.
func (a *Authority) RootKeyVersion() int { return a.rootV }

// Roots returns the trust bundle: every root a relying party should trust.
func (a *Authority) Roots() []*x509.Certificate { return []*x509.Certificate{a.root} }

// RootPool returns the trust bundle as a pool.
func (a *Authority) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range a.Roots() {
		p.AddCert(r)
	}
	return p
}

// Mode returns the intermediate mode.
func (a *Authority) Mode() Mode { return a.o.Mode }

// Describe says where the keys live.
func (a *Authority) Describe() string { return a.keys.Describe() }

// Intermediate returns the current issuing intermediate.
func (a *Authority) Intermediate() *Intermediate {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.cur
}

// Renew replaces the issuing intermediate with a fresh one. In ModeMemory it
// generates a new key; in ModeVault it reuses a certificate another replica
// stored for the key's latest version while that is not past half its life,
// and otherwise certifies the key anew.
func (a *Authority) Renew(ctx context.Context) error {
	var (
		next *Intermediate
		err  error
	)
	if a.o.Mode == ModeVault {
		next, err = a.vaultIntermediate(ctx)
	} else {
		next, err = a.memoryIntermediate(ctx)
	}
	if err != nil {
		return err
	}
	if a.o.OnIntermediate != nil {
		if err := a.o.OnIntermediate(ctx, next); err != nil {
			return fmt.Errorf("record intermediate: %w", err)
		}
	}
	a.mu.Lock()
	a.cur = next
	a.mu.Unlock()
	a.o.Logger.InfoContext(ctx, "issuing intermediate ready",
		slog.String("mode", string(next.Mode)),
		slog.String("subject", next.Cert.Subject.String()),
		slog.String("fingerprint", next.Fingerprint),
		slog.Time("not_after", next.Cert.NotAfter),
		slog.Time("renew_at", next.RenewAt))
	return nil
}

func (a *Authority) memoryIntermediate(ctx context.Context) (*Intermediate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := a.certify(ctx, key.Public())
	if err != nil {
		return nil, err
	}
	return newIntermediate(cert, key, ModeMemory, 0), nil
}

func (a *Authority) vaultIntermediate(ctx context.Context) (*Intermediate, error) {
	signer, err := a.keys.Signer(ctx, a.o.IntermediateKey, 0)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: intermediate key %s does not exist; run \"ca init\" with the vault intermediate mode", ErrNotInitialized, a.o.IntermediateKey)
	}
	if err != nil {
		return nil, fmt.Errorf("intermediate key: %w", err)
	}
	name := intermediateCertName(a.o.IntermediateKey, signer.KeyVersion())
	stored, rev, err := a.certs.Load(ctx, name)
	if err != nil && !errors.Is(err, ErrCertNotFound) {
		return nil, err
	}
	now := a.o.Now()
	if err == nil && a.usable(stored, signer.Public(), now) {
		return newIntermediate(stored, signer, ModeVault, signer.KeyVersion()), nil
	}
	cert, err := a.certify(ctx, signer.Public())
	if err != nil {
		return nil, err
	}
	current, _, err := a.certs.Store(ctx, name, cert, rev)
	if err != nil {
		return nil, fmt.Errorf("store intermediate certificate: %w", err)
	}
	if !a.usable(current, signer.Public(), now) {
		return nil, fmt.Errorf("intermediate certificate %s stored by another replica is not usable", name)
	}
	return newIntermediate(current, signer, ModeVault, signer.KeyVersion()), nil
}

// usable reports whether a stored intermediate was issued by the current
// root for pub and is not yet past half its life.
func (a *Authority) usable(cert *x509.Certificate, pub crypto.PublicKey, now time.Time) bool {
	if cert == nil || matchesKey(cert, pub) != nil || cert.CheckSignatureFrom(a.root) != nil {
		return false
	}
	return now.Before(halfLife(cert))
}

// certify signs an intermediate certificate for pub with the root key. Its
// validity period is the intermediate TTL, cut short at the root's NotAfter.
func (a *Authority) certify(ctx context.Context, pub crypto.PublicKey) (*x509.Certificate, error) {
	ski := keyID(pub)
	notBefore, notAfter := Validity(a.o.Now(), a.o.IntermediateTTL)
	if notAfter.After(a.root.NotAfter) {
		notAfter = a.root.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:               a.o.name("transitca issuing CA " + hex.EncodeToString(ski[:4])),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	cert, err := createCert(ctx, tmpl, a.root, pub, a.rootS)
	if err != nil {
		return nil, fmt.Errorf("certify intermediate with root key %s version %d: %w", a.rootS.KeyName(), a.rootS.KeyVersion(), err)
	}
	return cert, nil
}

func newIntermediate(cert *x509.Certificate, signer crypto.Signer, mode Mode, version int) *Intermediate {
	return &Intermediate{
		Cert:        cert,
		Signer:      signer,
		Mode:        mode,
		KeyVersion:  version,
		Fingerprint: Fingerprint(cert),
		RenewAt:     halfLife(cert),
	}
}

func halfLife(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
}

// Run renews the intermediate whenever it passes half its life, until ctx
// ends. A failed renewal is logged and retried; the current intermediate
// stays in use meanwhile.
func (a *Authority) Run(ctx context.Context) {
	const retry = 30 * time.Second
	for {
		wait := time.Until(a.Intermediate().RenewAt)
		if wait < 0 {
			wait = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := a.Renew(ctx); err != nil {
			a.o.Logger.ErrorContext(ctx, "renew issuing intermediate", slog.Any("error", err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
		}
	}
}

// Issued is a signed leaf and what it was signed with.
type Issued struct {
	Cert   *x509.Certificate
	Issuer *Intermediate
	// RootKeyVersion is the root key version the issuer chains to.
	RootKeyVersion int
}

// SignLeaf signs a leaf certificate for pub with the current intermediate.
// It sets a fresh 128-bit random serial, the subject key identifier of pub
// and the authority key identifier of the intermediate, and caps NotAfter
// at the intermediate's NotAfter: an intermediate outlives every leaf it
// signs. Build tmpl with LeafTemplate or ServingTemplate.
func (a *Authority) SignLeaf(ctx context.Context, tmpl *x509.Certificate, pub crypto.PublicKey) (*Issued, error) {
	in := a.Intermediate()
	t := *tmpl
	t.SubjectKeyId = keyID(pub)
	if t.NotAfter.After(in.Cert.NotAfter) {
		t.NotAfter = in.Cert.NotAfter
	}
	if t.IsCA {
		return nil, errors.New("refusing to sign a CA certificate as a leaf")
	}
	cert, err := createCert(ctx, &t, in.Cert, pub, in.Signer)
	if err != nil {
		return nil, fmt.Errorf("sign leaf with %s: %w", in.Cert.Subject.CommonName, err)
	}
	return &Issued{Cert: cert, Issuer: in, RootKeyVersion: a.rootV}, nil
}

// createCert signs tmpl with a fresh serial, binding signer to ctx.
func createCert(ctx context.Context, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	t := *tmpl
	t.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, &t, parent, pub, bind(ctx, signer))
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// NewSerial returns a positive serial number with 128 random bits.
func NewSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// Fingerprint returns the hex SHA-256 of a certificate's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// keyID is the subject key identifier for pub: the SHA-256 of its DER
// SubjectPublicKeyInfo, truncated to 160 bits.
func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}

// matchesKey reports an error unless cert certifies pub.
func matchesKey(cert *x509.Certificate, pub crypto.PublicKey) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := cert.PublicKey.(equaler)
	if !ok || !e.Equal(pub) {
		return errors.New("certificate public key does not match the key")
	}
	return nil
}

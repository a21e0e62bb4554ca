package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	sigsyaml "sigs.k8s.io/yaml"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/certlint"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// istiodEnv is a dev CA (with a rotation state, so that roots can be
// prepared) issuing through a certificate service into a real issuance log,
// and a namespace on a real API server that plays istiod's.
type istiodEnv struct {
	kube *kubetest.Env
	a    *issuer.Authority
	log  *store.Log
	svc  *ca.Service
	// client acts as transitca's service account, allowed only what the
	// README's Role grants.
	client kubernetes.Interface
}

const istiodSA = "istiod"

func newIstiodEnv(t *testing.T) *istiodEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	keys, certs := issuer.NewLocalKeys(filepath.Join(dir, "keys")), issuer.NewLocalCerts(filepath.Join(dir, "keys"))
	opts := issuer.Options{State: issuer.NewFileState(filepath.Join(dir, "rotation.json")), Logger: quiet}
	if _, err := issuer.Init(ctx, keys, certs, opts); err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Open(ctx, keys, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := store.Open(filepath.Join(dir, "issuance.db"), store.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	svc, err := ca.NewService(ca.ServiceOptions{
		Authenticator: ca.NewMultiAuthenticator(nil, nil),
		Authority:     a,
		Policy:        issuer.DefaultPolicy(),
		Recorder:      ca.LogRecorder{Log: l},
		Metrics:       ca.NewMetrics(prometheus.NewRegistry(), nil),
		Logger:        quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &istiodEnv{kube: kubetest.New(t), a: a, log: l, svc: svc}
	e.client = e.writerClient(t)
	return e
}

// writerClient is a client as the service account transitca, bound in
// the test's namespace to the Secret rules of the shipped Role
// (deploy/rbac/istiod/role.yaml): the one Secret by name, and create.
func (e *istiodEnv) writerClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	ctx := t.Context()
	e.kube.ServiceAccount(t, "transitca")
	shipped := shippedRole(t)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "transitca-istiod-tls"}}
	for _, r := range shipped.Rules {
		if slices.Contains(r.Resources, "secrets") {
			role.Rules = append(role.Rules, r)
		}
	}
	if len(role.Rules) == 0 {
		t.Fatal("deploy/rbac/istiod/role.yaml grants nothing on secrets")
	}
	rbac := e.kube.Client.RbacV1()
	if _, err := rbac.Roles(e.kube.Namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(e.kube.Namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "transitca-istiod-tls"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "transitca-istiod-tls"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "transitca", Namespace: e.kube.Namespace}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(e.kube.ServiceAccountConfig(t, "transitca"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// shippedRole reads deploy/rbac/istiod/role.yaml.
func shippedRole(t *testing.T) *rbacv1.Role {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "rbac", "istiod", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.Role
	if err := sigsyaml.UnmarshalStrict(data, &role); err != nil {
		t.Fatalf("deploy/rbac/istiod/role.yaml: %v", err)
	}
	return &role
}

func (e *istiodEnv) spiffeID() string {
	return "spiffe://cluster.local/ns/" + e.kube.Namespace + "/sa/" + istiodSA
}

// start runs the writer until the test ends.
func (e *istiodEnv) start(t *testing.T, names []string, ttl, every time.Duration) *IstiodCert {
	t.Helper()
	w, err := NewIstiodCert(IstiodCertOptions{
		Client: e.client, Issuer: e.svc, Hierarchy: e.a,
		Namespace: e.kube.Namespace, SPIFFEID: e.spiffeID(), DNSNames: names,
		TTL: ttl, CheckEvery: every, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (e *istiodEnv) get(t *testing.T) *corev1.Secret {
	t.Helper()
	s, err := e.kube.Client.CoreV1().Secrets(e.kube.Namespace).Get(t.Context(), IstiodSecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// await polls the Secret, as the admin, until ok says it is what the test
// waits for.
func (e *istiodEnv) await(t *testing.T, what string, ok func(*corev1.Secret) bool) *corev1.Secret {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := e.get(t)
		if s != nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("istiod-tls: no %s within 20s; last seen %v", what, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leafOf returns the first certificate of tls.crt, or nil.
func leafOf(s *corev1.Secret) *x509.Certificate {
	certs, err := parseCerts(s.Data[TLSCertKey])
	if err != nil {
		return nil
	}
	return certs[0]
}

// newSerial waits for a well-formed Secret with a certificate other than
// old's.
func (e *istiodEnv) newSerial(t *testing.T, what string, old *x509.Certificate) *corev1.Secret {
	t.Helper()
	return e.await(t, what, func(s *corev1.Secret) bool {
		l := leafOf(s)
		return s.Type == corev1.SecretTypeTLS && l != nil && (old == nil || l.SerialNumber.Cmp(old.SerialNumber) != 0) &&
			len(s.Data[TLSKeyKey]) > 0 && len(s.Data[CACertKey]) > 0
	})
}

// checkSecret checks what istiod and its clients rely on: the type and the
// three keys; tls.crt verifies against ca.crt for every name, carries
// istiod's SPIFFE ID and goes with tls.key; and the certificate is in the
// issuance log as the CA's own istiod issuance.
func (e *istiodEnv) checkSecret(t *testing.T, s *corev1.Secret, names []string) *x509.Certificate {
	t.Helper()
	if s.Type != corev1.SecretTypeTLS {
		t.Fatalf("type %s, want kubernetes.io/tls", s.Type)
	}
	if keys := slices.Sorted(func(yield func(string) bool) {
		for k := range s.Data {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(keys, []string{"ca.crt", "tls.crt", "tls.key"}) {
		t.Fatalf("keys %v, want ca.crt, tls.crt, tls.key", keys)
	}
	pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatalf("tls.crt and tls.key are not a key pair, as istiod loads them: %v", err)
	}
	if len(pair.Certificate) != 2 {
		t.Fatalf("tls.crt holds %d certificates, want the leaf and its intermediate", len(pair.Certificate))
	}
	leaf, inter := pair.Leaf, mustParse(t, pair.Certificate[1])
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.Data["ca.crt"]) {
		t.Fatal("ca.crt holds no certificate")
	}
	inters := x509.NewCertPool()
	inters.AddCert(inter)
	for _, n := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: roots, Intermediates: inters}); err != nil {
			t.Errorf("tls.crt does not verify against ca.crt for %s: %v", n, err)
		}
	}
	if len(leaf.DNSNames) != len(names) {
		t.Errorf("DNS names %v, want %v", leaf.DNSNames, names)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("tls.crt is not valid for client auth: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != e.spiffeID() {
		t.Errorf("URIs %v, want %s", leaf.URIs, e.spiffeID())
	}
	certlint.Check(t, leaf)
	entries, _, err := e.log.Query(t.Context(), store.Query{Serial: store.SerialHex(leaf.SerialNumber)})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("%d log entries for serial %s, want 1", len(entries), store.SerialHex(leaf.SerialNumber))
	}
	if en := entries[0]; en.Kind != store.KindIssuance || en.Tier != ca.IstiodTier || en.AuthMethod != string(ca.AuthSelf) ||
		en.SPIFFEID != e.spiffeID() || en.Namespace != e.kube.Namespace || en.ServiceAccount != istiodSA ||
		!slices.Equal(en.Certificate, leaf.Raw) {
		t.Errorf("log entry %+v, want the certificate as an istiod issuance by the CA itself", en)
	}
	return leaf
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The Secret istiod mounts is written, kept and repaired: a Secret of the
// wrong type is replaced, a deleted one recreated, an edited one repaired,
// and a new root in the trust bundle or a new intermediate brings a new
// certificate. Every certificate written is in the issuance log, and no
// other Secret is touched.
func TestIstiodSecret(t *testing.T) {
	e := newIstiodEnv(t)
	ctx := t.Context()
	ns := e.kube.Namespace
	secrets := e.kube.Client.CoreV1().Secrets(ns)
	names := IstiodDNSNames(ns, []string{"canary", "1-27"}, []string{"istiod.mesh.example", "istiod." + ns + ".svc"})
	want := []string{"istiod." + ns + ".svc", "istiod-canary." + ns + ".svc", "istiod-1-27." + ns + ".svc", "istiod.mesh.example"}
	if !slices.Equal(names, want) {
		t.Fatalf("IstiodDNSNames = %v, want %v", names, want)
	}

	other, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod-tls-backup"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": []byte("x"), "tls.key": []byte("y")},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// An Opaque istiod-tls, as someone might have made by hand: its type
	// cannot be changed, so it is replaced; its labels are not kept then.
	if _, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: IstiodSecretName},
		Data:       map[string][]byte{"tls.crt": []byte("hand made")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	e.start(t, names, 24*time.Hour, 200*time.Millisecond)
	s := e.newSerial(t, "certificate in place of the Opaque secret", nil)
	first := e.checkSecret(t, s, want)
	if s.Labels[managedBy] != "transitca" {
		t.Errorf("labels %v, want %s=transitca", s.Labels, managedBy)
	}
	if got := first.NotAfter.Sub(first.NotBefore); got != 24*time.Hour {
		t.Errorf("validity period %s, want 24h", got)
	}

	// Safe to run again and again: with nothing changed, the checks every
	// 200ms leave the Secret alone.
	time.Sleep(time.Second)
	if again := e.get(t); again.ResourceVersion != s.ResourceVersion {
		t.Fatalf("an unchanged Secret was rewritten (resourceVersion %s → %s)", s.ResourceVersion, again.ResourceVersion)
	}

	t.Run("deleted", func(t *testing.T) {
		if err := secrets.Delete(ctx, IstiodSecretName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		cur := e.checkSecret(t, e.newSerial(t, "recreated secret", first), want)
		first = cur
	})

	t.Run("edited", func(t *testing.T) {
		s := e.get(t)
		s.Data["tls.crt"] = []byte("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
		s.Labels["team"] = "mesh"
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		got := e.newSerial(t, "repaired secret", first)
		first = e.checkSecret(t, got, want)
		if got.Labels["team"] != "mesh" {
			t.Errorf("labels %v: the repair dropped a label someone set", got.Labels)
		}
	})

	t.Run("key replaced", func(t *testing.T) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		s := e.get(t)
		s.Data["tls.key"] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		first = e.checkSecret(t, e.newSerial(t, "repaired key", first), want)
	})

	t.Run("root prepared", func(t *testing.T) {
		if _, err := e.a.PrepareRoot(ctx); err != nil {
			t.Fatal(err)
		}
		got := e.await(t, "ca.crt with both roots", func(s *corev1.Secret) bool {
			return strings.Count(string(s.Data["ca.crt"]), "BEGIN CERTIFICATE") == 2
		})
		cur := e.checkSecret(t, got, want)
		if cur.SerialNumber.Cmp(first.SerialNumber) == 0 {
			t.Error("the trust bundle changed but the certificate did not")
		}
		first = cur
	})

	t.Run("intermediate rotated", func(t *testing.T) {
		in, err := e.a.RotateIntermediate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := e.await(t, "certificate from the new intermediate", func(s *corev1.Secret) bool {
			certs, err := parseCerts(s.Data[TLSCertKey])
			return err == nil && len(certs) == 2 && certs[1].Equal(in.Cert)
		})
		first = e.checkSecret(t, got, want)
	})

	if o, err := secrets.Get(ctx, other.Name, metav1.GetOptions{}); err != nil || o.ResourceVersion != other.ResourceVersion {
		t.Errorf("another Secret in the namespace was touched: %v, %v", o, err)
	}
	// One issuance per certificate written: the first, and one for each
	// of the five changes above; nothing issued and left undelivered.
	kind := store.KindIssuance
	entries, _, err := e.log.Query(ctx, store.Query{Namespace: ns, Kind: &kind})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 6 {
		t.Errorf("%d istiod issuances in the log, want 6", len(entries))
	}
}

// The certificate is renewed at half its lifetime, without any event or
// periodic check: the writer wakes up at half-life itself.
func TestIstiodSecretRenewsAtHalfLife(t *testing.T) {
	e := newIstiodEnv(t)
	names := IstiodDNSNames(e.kube.Namespace, nil, nil)
	// NotBefore is back-dated by issuer.Backdate: this lifetime puts
	// half-life two seconds after issuance.
	e.start(t, names, 2*issuer.Backdate+4*time.Second, time.Hour)
	first := e.checkSecret(t, e.newSerial(t, "first certificate", nil), names)
	started := time.Now()
	next := e.checkSecret(t, e.newSerial(t, "renewed certificate", first), names)
	if el := time.Since(started); el > 10*time.Second {
		t.Errorf("renewed after %s, want about 2s", el)
	}
	if next.NotBefore.Before(first.NotBefore.Add(time.Second)) {
		t.Errorf("renewed certificate starts %s, the first %s", next.NotBefore, first.NotBefore)
	}
}

// Told that the hierarchy changed, the writer checks the Secret at once,
// not at its next periodic check (an hour here): ca.crt follows a root
// rotation step and tls.crt a new intermediate within seconds, as the
// istio-ca-root-cert ConfigMaps do.
func TestIstiodSecretFollowsHierarchyChangedAtOnce(t *testing.T) {
	e := newIstiodEnv(t)
	ctx := t.Context()
	names := IstiodDNSNames(e.kube.Namespace, nil, nil)
	w := e.start(t, names, 24*time.Hour, time.Hour)
	e.checkSecret(t, e.newSerial(t, "first certificate", nil), names)

	if _, err := e.a.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	w.HierarchyChanged()
	got := e.await(t, "ca.crt with both roots", func(s *corev1.Secret) bool {
		return strings.Count(string(s.Data[CACertKey]), "BEGIN CERTIFICATE") == 2
	})
	first := e.checkSecret(t, got, names)

	in, err := e.a.RotateIntermediate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.HierarchyChanged()
	got = e.await(t, "certificate from the new intermediate", func(s *corev1.Secret) bool {
		certs, err := parseCerts(s.Data[TLSCertKey])
		return err == nil && len(certs) == 2 && certs[1].Equal(in.Cert)
	})
	if e.checkSecret(t, got, names).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("the intermediate changed but the certificate did not")
	}
}

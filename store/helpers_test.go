package store

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

const testOrigin = "transitca.test/issuance-log"

// testKey is a fixed Ed25519 key, so that test checkpoints are reproducible.
var testKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

func testSigner(t testing.TB) *NoteSigner {
	t.Helper()
	s, err := NewNoteSigner(testOrigin, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testVerifier parses the published verifier key text, as an auditor would.
func testVerifier(t testing.TB) note.Verifier {
	t.Helper()
	vkey, err := VerifierKey(testOrigin, testKey.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var testEpoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var testIssuers = []string{
	fingerprint("issuer-a"), fingerprint("issuer-b"), fingerprint("issuer-c"),
}

func fingerprint(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testEntry returns a realistic entry number i of the given kind. Entries
// differ in identity, namespace, issuer, time and validity so that every
// index has several keys.
func testEntry(i int, kind Kind) *Entry {
	ns := fmt.Sprintf("ns-%d", i%5)
	sa := fmt.Sprintf("sa-%d", i%4)
	e := &Entry{
		Kind:           kind,
		Time:           testEpoch.Add(time.Duration(i) * time.Minute),
		SPIFFEID:       fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa),
		Namespace:      ns,
		ServiceAccount: sa,
		CallerID:       fmt.Sprintf("system:serviceaccount:%s:%s", ns, sa),
		AuthMethod:     "k8s-jwt",
		CallerSubject:  "pod-" + fmt.Sprint(i),
		ClusterID:      "Kubernetes",
		RequestedTTL:   24 * time.Hour,
	}
	switch kind {
	case KindIssuance:
		e.Serial = fmt.Sprintf("%032x", uint64(i)*0x9e3779b97f4a7c15+1)
		e.Tier = "service"
		e.GrantedTTL = time.Duration(1+i%7) * time.Hour
		e.NotBefore = e.Time.Add(-time.Minute)
		e.NotAfter = e.Time.Add(e.GrantedTTL)
		e.IssuerFingerprint = testIssuers[(i/40)%len(testIssuers)]
		e.IssuerKeyVersion = 1 + i/40
		e.RootKeyVersion = 1
		e.Certificate = fakeCert(i, 600)
	case KindDenial:
		e.Code = "PermissionDenied"
		e.Reason = "CSR URI SAN does not match the caller identity"
	case KindAdmin:
		e.SPIFFEID, e.Namespace = "", ""
		e.Action = "rotate-intermediate"
		e.Actor = "alice@example.com"
		e.Detail = `{"old":1,"new":2}`
	}
	return e
}

func fakeCert(i, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(i), byte(i >> 8), byte(i >> 16)})
	b := make([]byte, n)
	_, _ = io.ReadFull(r, b)
	b[0] = 0x30 // looks like a DER SEQUENCE
	return b
}

// kindOf mixes kinds: mostly issuances, some denials and admin entries.
func kindOf(i int) Kind {
	switch {
	case i%11 == 3:
		return KindDenial
	case i%29 == 7:
		return KindAdmin
	}
	return KindIssuance
}

func openTest(t testing.TB, path string, opts Options) *Log {
	t.Helper()
	l, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// fillLog appends n entries (entry i is testEntry(i, kindOf(i))) and
// returns them with Seq set.
func fillLog(t testing.TB, l *Log, n int) []*Entry { return fillLogFrom(t, l, 0, n) }

// fillLogFrom appends entries from..from+n-1 one by one.
func fillLogFrom(t testing.TB, l *Log, from, n int) []*Entry {
	t.Helper()
	ctx := context.Background()
	out := make([]*Entry, n)
	for i := range n {
		e := testEntry(from+i, kindOf(from+i))
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatalf("Append(%d): %v", from+i, err)
		}
		out[i] = e
	}
	return out
}

// fillLogBatched appends n entries with few commits (one per batch of
// size batch), through the same code path as Append's committer.
func fillLogBatched(t testing.TB, l *Log, from, n, batch int, gen func(i int) *Entry) {
	t.Helper()
	for start := from; start < from+n; start += batch {
		end := min(start+batch, from+n)
		reqs := make([]*appendReq, 0, end-start)
		for i := start; i < end; i++ {
			e := gen(i)
			if e.Time.IsZero() {
				e.Time = l.opts.Now()
			}
			if err := e.validate(); err != nil {
				t.Fatal(err)
			}
			reqs = append(reqs, l.newAppendReq(e))
		}
		l.commit(reqs)
		for _, r := range reqs {
			if r.err != nil {
				t.Fatal(r.err)
			}
		}
	}
}

func copyFile(t testing.TB, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }

type nodeID = compact.NodeID

func noteVerifiers(vs ...note.Verifier) note.Verifiers { return note.VerifierList(vs...) }

func ecdsaKey() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), crand.Reader) }

func verifyInclusionRaw(index, size uint64, leafHash []byte, p [][]byte, root []byte) error {
	return proof.VerifyInclusion(hasher, index, size, leafHash, p, root)
}

func verifyConsistencyRaw(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	return proof.VerifyConsistency(hasher, size1, size2, p, root1, root2)
}

package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var benchEntries = flag.Int("store.bench-entries", 1_000_000,
	"entries in the log built for the query, verify and open benchmarks")

// The large log is built once per test binary run, on first use by a
// benchmark, in a temporary directory removed by TestMain.
var bigLog struct {
	once    sync.Once
	dir     string
	path    string
	err     error
	entries int
	build   time.Duration
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bigLog.dir != "" {
		_ = os.RemoveAll(bigLog.dir)
	}
	os.Exit(code)
}

// Shape of the benchmark log: a mesh of 200 namespaces × 50 service
// accounts, 10,000 identities; an intermediate rotated every 50,000
// issuances; one entry every 2.6 s (a month per million).
const (
	benchNamespaces  = 200
	benchAccounts    = 50
	benchIssuerEvery = 50_000
	benchStep        = 2600 * time.Millisecond
)

func benchIdentity(i int) (ns, sa string) {
	id := i % (benchNamespaces * benchAccounts)
	return fmt.Sprintf("ns-%03d", id%benchNamespaces), fmt.Sprintf("sa-%02d", id/benchNamespaces)
}

func benchIssuer(i int) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("intermediate-%d", i/benchIssuerEvery)))
	return hex.EncodeToString(h[:])
}

// benchCert is a DER ECDSA P-256 leaf shaped as the issuer package makes
// them (a SPIFFE URI SAN, key and extended key usage, the authority key
// ID), signed by a P-256 intermediate named as transitca names them:
// about 490 bytes.
var benchCert = benchLeafCert()

func benchLeafCert() []byte {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		panic(err)
	}
	now := testEpoch
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{Organization: []string{"cluster.local"}, CommonName: "transitca issuing CA 0a1b2c3d"},
		NotBefore:    now, NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		SubjectKeyId: make([]byte, 20),
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		panic(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: new(big.Int).Lsh(big.NewInt(1), 126),
		URIs:         []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/ns-123/sa/sa-45"}},
		NotBefore:    now.Add(-5 * time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(crand.Reader, leaf, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		panic(err)
	}
	return der
}

// benchEntry returns entry i of the benchmark log: about 2% denials, 0.1%
// admin actions, the rest issuances.
func benchEntry(i int, r *rand.Rand) *Entry {
	ns, sa := benchIdentity(i)
	e := &Entry{
		Kind:           KindIssuance,
		Time:           testEpoch.Add(time.Duration(i) * benchStep),
		SPIFFEID:       "spiffe://cluster.local/ns/" + ns + "/sa/" + sa,
		Namespace:      ns,
		ServiceAccount: sa,
		CallerID:       "system:serviceaccount:" + ns + ":" + sa,
		AuthMethod:     "k8s-jwt",
		CallerSubject:  fmt.Sprintf("%s-%08x", sa, r.Uint32()),
		ClusterID:      "Kubernetes",
		RequestedTTL:   24 * time.Hour,
	}
	// Prime moduli, so that every identity gets all kinds of entries.
	switch {
	case i%997 == 996:
		*e = Entry{Kind: KindAdmin, Time: e.Time, Action: "rotate-intermediate", Actor: "ops@example.com", Detail: `{"drill":true}`}
	case i%47 == 7:
		e.Kind, e.Code, e.Reason = KindDenial, "PermissionDenied", "CSR URI SAN does not match the caller identity"
	default:
		e.Serial = fmt.Sprintf("%016x%016x", r.Uint64(), r.Uint64())
		e.Tier = "service"
		e.GrantedTTL = 24 * time.Hour
		e.NotBefore = e.Time.Add(-time.Minute)
		e.NotAfter = e.Time.Add(24 * time.Hour)
		e.IssuerFingerprint = benchIssuer(i)
		e.IssuerKeyVersion = 1 + i/benchIssuerEvery
		e.RootKeyVersion = 1
		e.Certificate = benchCert
		// The pod a bound token names, as TokenReview reports it.
		e.PodName = fmt.Sprintf("%s-%08x-%05x", sa, r.Uint32(), r.Uint32()&0xfffff)
		e.PodUID = fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xfff, r.Uint32()&0xfff, r.Uint64()&0xffffffffffff)
	}
	return e
}

// bigLogPath returns the path of the large benchmark log, building it on
// first use (NoSync, batches of 10,000 entries through the committer's own
// write path, a checkpoint every 100,000 entries).
func bigLogPath(b *testing.B) string {
	b.Helper()
	if testing.Short() {
		b.Skipf("-short: not building a %d-entry log", *benchEntries)
	}
	bigLog.once.Do(func() {
		start := time.Now()
		dir, err := os.MkdirTemp("", "transitca-store-bench-")
		if err != nil {
			bigLog.err = err
			return
		}
		bigLog.dir, bigLog.path, bigLog.entries = dir, filepath.Join(dir, "log.db"), *benchEntries
		l, err := Open(bigLog.path, Options{NoSync: true, Signer: testSigner(b), CheckpointEvery: 1 << 40, CheckpointInterval: time.Hour})
		if err != nil {
			bigLog.err = err
			return
		}
		r := rand.New(rand.NewPCG(1, 2))
		const batch = 10_000
		for from := 0; from < bigLog.entries; from += batch {
			n := min(batch, bigLog.entries-from)
			reqs := make([]*appendReq, 0, n)
			for i := from; i < from+n; i++ {
				e := benchEntry(i, r)
				reqs = append(reqs, l.newAppendReq(e))
			}
			l.commit(reqs)
			for _, q := range reqs {
				if q.err != nil {
					bigLog.err = q.err
					_ = l.Close()
					return
				}
			}
			if (from+n)%100_000 == 0 {
				if _, err := l.WriteCheckpoint(context.Background()); err != nil {
					bigLog.err = err
				}
			}
		}
		if err := l.Close(); err != nil {
			bigLog.err = err
		}
		// Written without fsync: flush it now rather than during the
		// benchmarks.
		if f, err := os.Open(bigLog.path); err == nil {
			_ = f.Sync()
			_ = f.Close()
		}
		bigLog.build = time.Since(start)
		fmt.Fprintf(os.Stderr, "built a %d-entry log in %v (%s)\n", bigLog.entries, bigLog.build.Round(time.Millisecond), fileSizeString(bigLog.path))
	})
	if bigLog.err != nil {
		b.Fatalf("building the benchmark log: %v", bigLog.err)
	}
	return bigLog.path
}

func fileSizeString(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%.1f MiB", float64(fi.Size())/(1<<20))
}

func reportBytesPerEntry(b *testing.B, path string, entries int) {
	if fi, err := os.Stat(path); err == nil && entries > 0 {
		b.ReportMetric(float64(fi.Size())/float64(entries), "bytes/entry")
	}
}

// BenchmarkAppend measures durable appends (fsync on) from concurrent
// writers sharing group commits, to a new log.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			benchAppend(b, filepath.Join(b.TempDir(), "log.db"), writers, 0)
		})
	}
}

// BenchmarkAppendLargeLog appends durably, from 256 writers, to a copy of
// the large benchmark log (compare with BenchmarkAppend/writers=256: in
// schema 2 an append touches the same pages whatever the log's size).
func BenchmarkAppendLargeLog(b *testing.B) {
	src := bigLogPath(b)
	path := filepath.Join(b.TempDir(), "log.db")
	if err := copyFileTo(src, path); err != nil {
		b.Fatal(err)
	}
	benchAppend(b, path, 256, bigLog.entries)
}

func copyFileTo(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	// Flush now, or the first commit's fsync would write the whole copy.
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// benchAppend appends b.N entries numbered from first (so that serials
// and times continue those of an existing log) from the given number of
// writers, and reports throughput, latency and batching.
func benchAppend(b *testing.B, path string, writers, first int) {
	l, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, uint64(first)))
	entries := make([]*Entry, b.N)
	for i := range entries {
		entries[i] = benchEntry(first+i, r)
	}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	ctx := context.Background()
	st0 := l.Stats()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if _, err := l.Append(ctx, entries[i]); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	st := l.Stats()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(st.Size-st0.Size)/float64(max(st.Commits-st0.Commits, 1)), "entries/commit")
}

func benchQuery(b *testing.B, q func(i int) Query) {
	path := bigLogPath(b)
	l, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	total, n := 0, 0
	for i := 0; b.Loop(); i++ {
		n++
		got, _, err := l.Query(ctx, q(i))
		if err != nil {
			b.Fatal(err)
		}
		if len(got) == 0 {
			b.Fatalf("query %+v matched nothing", q(i))
		}
		total += len(got)
	}
	b.ReportMetric(float64(total)/float64(n), "entries/page")
	reportBytesPerEntry(b, path, bigLog.entries)
}

// BenchmarkQueryBySPIFFEID: a page of one identity's entries (about 100
// per identity in a million), newest first.
func BenchmarkQueryBySPIFFEID(b *testing.B) {
	benchQuery(b, func(i int) Query {
		ns, sa := benchIdentity(i * 7919)
		return Query{SPIFFEID: "spiffe://cluster.local/ns/" + ns + "/sa/" + sa, Newest: true}
	})
}

// BenchmarkQueryByIssuer: the first page of 100 of the ~50,000 entries an
// intermediate signed.
func BenchmarkQueryByIssuer(b *testing.B) {
	benchQuery(b, func(i int) Query {
		n := max(bigLog.entries/benchIssuerEvery, 1)
		return Query{Issuer: benchIssuer((i % n) * benchIssuerEvery)}
	})
}

// BenchmarkQueryValidAt: a page of the certificates valid at a moment.
func BenchmarkQueryValidAt(b *testing.B) {
	benchQuery(b, func(i int) Query {
		at := testEpoch.Add(time.Duration((i*104729)%max(bigLog.entries, 1)) * benchStep)
		return Query{ValidAt: at}
	})
}

// BenchmarkVerify re-checks the whole large log.
func BenchmarkVerify(b *testing.B) {
	path := bigLogPath(b)
	l, err := Open(path, Options{ReadOnly: true, Verifiers: noteVerifiers(testVerifier(b))})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	n := 0
	for b.Loop() {
		n++
		res, err := l.Verify(context.Background(), nil)
		if err != nil {
			b.Fatal(err)
		}
		if res.Size != uint64(bigLog.entries) || res.SignaturesVerified == 0 {
			b.Fatalf("Verify = %+v", res)
		}
	}
	b.ReportMetric(float64(bigLog.entries)*float64(n)/b.Elapsed().Seconds(), "entries/s")
	reportBytesPerEntry(b, path, bigLog.entries)
}

// BenchmarkOpen opens the large log read-write, which runs the integrity
// check of Open.
func BenchmarkOpen(b *testing.B) {
	path := bigLogPath(b)
	n := 0
	for b.Loop() {
		n++
		l, err := Open(path, Options{Signer: testSigner(b)})
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(bigLog.entries)*float64(n)/b.Elapsed().Seconds(), "entries/s")
}

package driver

import (
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// stack builds a sample of d whose stack is funcs, leaf first.
func stack(d time.Duration, funcs ...string) *profile.Sample {
	s := &profile.Sample{Value: []int64{1, int64(d)}}
	for _, f := range funcs {
		s.Location = append(s.Location, &profile.Location{Line: []profile.Line{{Function: &profile.Function{Name: f}}}})
	}
	return s
}

func TestSplitByStage(t *testing.T) {
	const sign = "crypto/x509.signTBS"
	p := &profile.Profile{
		SampleType:    []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		DurationNanos: int64(2 * time.Second),
		Sample: []*profile.Sample{
			stack(30*time.Millisecond, "syscall.Syscall6", "go.etcd.io/bbolt.(*Tx).Commit", "github.com/transitca/transitca/store.(*Log).commit", "github.com/transitca/transitca/store.(*Log).committer"),
			stack(10*time.Millisecond, "go.etcd.io/bbolt.(*node).put", "github.com/transitca/transitca/store.(*Log).committer"),
			stack(40*time.Millisecond, "crypto/ecdsa.VerifyASN1", "crypto/ecdsa.Verify", "github.com/transitca/transitca/ca.(*compactJWS).verify", "github.com/transitca/transitca/ca.(*JWTAuthenticator).Authenticate"),
			stack(20*time.Millisecond, "crypto/ecdsa.VerifyASN1", "crypto/x509.checkSignature", "crypto/x509.(*CertificateRequest).CheckSignature", "github.com/transitca/transitca/ca.CheckCSR"),
			stack(25*time.Millisecond, "crypto/ecdsa.VerifyASN1", "crypto/x509.checkSignature", sign, "crypto/x509.CreateCertificate", "istio.io/istio/security/pkg/pki/util.GenCertFromCSR"),
			stack(15*time.Millisecond, "crypto/ecdsa.SignASN1", "crypto.SignMessage", sign, "crypto/x509.CreateCertificate"),
			stack(6*time.Millisecond, "crypto/ecdsa.SignASN1", "crypto/ecdsa.(*PrivateKey).Sign", "github.com/transitca/transitca/issuer.signLeaf"),
			stack(9*time.Millisecond, "crypto/ecdsa.VerifyASN1", "github.com/transitca/transitca/issuer.checkLeafSignature", "github.com/transitca/transitca/issuer.signLeaf"),
			stack(5*time.Millisecond, "encoding/asn1.Marshal", "crypto/x509.CreateCertificate", "github.com/transitca/transitca/issuer.(*Authority).SignLeaf"),
			stack(5*time.Millisecond, "github.com/prometheus/client_golang/prometheus.(*histogram).Observe", "google.golang.org/grpc.(*Server).processRPC"),
			stack(8*time.Millisecond, "syscall.Write", "crypto/tls.(*Conn).Write", "google.golang.org/grpc/internal/transport.(*loopyWriter).run"),
			stack(7*time.Millisecond, "runtime.scanobject", "runtime.gcBgMarkWorker"),
			stack(3*time.Millisecond, "runtime.schedule"),
		},
	}
	sp := splitByStage(p)
	want := map[string]time.Duration{
		"log: commit (bbolt page writes, fdatasync)": 30 * time.Millisecond,
		"log: bucket and index puts":                 10 * time.Millisecond,
		"authentication (token signature)":           40 * time.Millisecond,
		"CSR checks (signature)":                     20 * time.Millisecond,
		"signing: the check of the new signature":    25*time.Millisecond + 9*time.Millisecond,
		"signing: the signature":                     21 * time.Millisecond,
		"signing: template, DER, parse":              5 * time.Millisecond,
		"metrics":                                    5 * time.Millisecond,
		"TLS and gRPC":                               8 * time.Millisecond,
		"garbage collection":                         7 * time.Millisecond,
		otherStage:                                   3 * time.Millisecond,
	}
	for name, d := range want {
		if got := sp.stages[name]; got != d {
			t.Errorf("%s: %v, want %v", name, got, d)
		}
	}
	if sp.total != 183*time.Millisecond || sp.seconds != 2 {
		t.Errorf("total %v over %vs, want 183ms over 2s", sp.total, sp.seconds)
	}
	for name := range sp.stages {
		if !strings.Contains(strings.Join(stageNames(), "\n"), name) {
			t.Errorf("stage %q is not in the report's list", name)
		}
	}
}

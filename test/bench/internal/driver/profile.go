package driver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/transitca/transitca/test/bench/loadgen"
)

// stage is a part of the work of one issuance, recognised in a CPU
// profile by the functions on a sample's stack.
type stage struct {
	name string
	// all must each match a function on the stack.
	all []*regexp.Regexp
}

func re(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// stages classify a sample: the first stage whose functions are all on its
// stack takes it. They are ordered from the most specific. The same rules
// serve transitca and Istio's CA server: each server's own pipeline
// functions are named where they differ.
var stages = []stage{
	{name: "log: commit (bbolt page writes, fdatasync)", all: []*regexp.Regexp{re(`transitca/store\.\(\*Log\)\.committer`), re(`bbolt\.\(\*Tx\)\.Commit`)}},
	{name: "log: Merkle hashes", all: []*regexp.Regexp{re(`transitca/store\.\(\*Log\)\.committer`), re(`sha256|merkle`)}},
	{name: "log: bucket and index puts", all: []*regexp.Regexp{re(`transitca/store\.\(\*Log\)\.committer`)}},
	{name: "log: encode and queue", all: []*regexp.Regexp{re(`transitca/store\.|transitca/ca\.LogRecorder`)}},
	{name: "authentication (token signature)", all: []*regexp.Regexp{re(`transitca/ca\.\(\*(JWT|TokenReview|Multi)Authenticator\)`), re(`crypto/(ecdsa|rsa)\.Verify`)}},
	{name: "authentication (parse, claims)", all: []*regexp.Regexp{re(`transitca/ca\.\(\*(JWT|TokenReview|Multi)Authenticator\)|security/pkg/server/ca\.\(\*Server\)\.authenticate`)}},
	{name: "CSR checks (signature)", all: []*regexp.Regexp{re(`x509\.\(\*CertificateRequest\)\.CheckSignature`)}},
	{name: "CSR checks (parse, policy)", all: []*regexp.Regexp{re(`transitca/ca\.CheckCSR|x509\.ParseCertificateRequest|pki/util\.ParsePemEncodedCSR`)}},
	{name: "signing: the signature", all: []*regexp.Regexp{re(`x509\.signTBS|transitca/issuer\.signLeaf`), re(`crypto\.SignMessage|\(\*PrivateKey\)\.Sign`)}},
	{name: "signing: the check of the new signature", all: []*regexp.Regexp{re(`x509\.signTBS|transitca/issuer\.signLeaf`), re(`x509\.checkSignature|transitca/issuer\.checkLeafSignature`)}},
	{name: "signing: template, DER, parse", all: []*regexp.Regexp{re(`transitca/issuer\.\(\*Authority\)\.SignLeaf|x509\.CreateCertificate|pki/util\.GenCertFromCSR|pki/ca\.\(\*IstioCA\)\.sign`)}},
	{name: "chain check", all: []*regexp.Regexp{re(`transitca/ca\.\(\*Service\)\.verifyChain`)}},
	{name: "metrics", all: []*regexp.Regexp{re(`prometheus`)}},
	{name: "logging", all: []*regexp.Regexp{re(`^log/slog\.|^log\.`)}},
	{name: "rest of the request handler", all: []*regexp.Regexp{re(`transitca/ca\.\(\*Service\)\.CreateCertificate|security/pkg/server/ca\.\(\*Server\)\.CreateCertificate`)}},
	{name: "garbage collection", all: []*regexp.Regexp{re(`^runtime\.(gcBgMarkWorker|gcAssistAlloc|bgsweep|bgscavenge)`)}},
	{name: "TLS and gRPC", all: []*regexp.Regexp{re(`crypto/tls\.|google\.golang\.org/grpc|golang\.org/x/net/http2|^net\.|internal/poll\.`)}},
}

// otherStage takes what no stage does: the scheduler, timers, syscalls
// outside the above.
const otherStage = "other (scheduler, runtime)"

// stageProfile is where one server's CPU went during a closed-loop run.
type stageProfile struct {
	sys     *system
	res     *loadgen.Result
	total   time.Duration            // CPU in the profile
	seconds float64                  // the profile's wall-clock duration
	stages  map[string]time.Duration // CPU per stage
	file    string                   // the profile, in the work directory
	// allocBytes and allocObjects are what the server allocated over
	// the window.
	allocBytes, allocObjects int64
}

// issuances is how many certificates were issued over the profile's
// window.
func (p *stageProfile) issuances() float64 { return p.res.Throughput() * p.seconds }

// perIssuance is d spread over the issuances the profile covers.
func (p *stageProfile) perIssuance(d time.Duration) time.Duration {
	n := p.issuances()
	if n <= 0 {
		return 0
	}
	return time.Duration(float64(d) / n)
}

// stageNames lists every stage in report order.
func stageNames() []string {
	names := make([]string, 0, len(stages)+1)
	for _, s := range stages {
		names = append(names, s.name)
	}
	return append(names, otherStage)
}

// profiled runs one closed loop on s while its server records a CPU
// profile and its allocations over the measured window, and splits the
// CPU profile by stage.
func (e *env) profiled(ctx context.Context, s *system) (*stageProfile, error) {
	type got struct {
		p   *profile.Profile
		err error
	}
	fetch := func(kind string) <-chan got {
		ch := make(chan got, 1)
		go func() {
			select {
			case <-time.After(e.cfg.Warmup):
			case <-ctx.Done():
				ch <- got{err: ctx.Err()}
				return
			}
			p, err := fetchProfile(ctx, s.pprof, kind, e.cfg.Duration)
			ch <- got{p, err}
		}()
		return ch
	}
	cpuCh, allocCh := fetch("profile"), fetch("allocs")
	res, err := e.closed(ctx, s, e.ecdsa, s.id+" profiled")
	if err != nil {
		return nil, err
	}
	cpu, allocs := <-cpuCh, <-allocCh
	if err := errors.Join(cpu.err, allocs.err); err != nil {
		return nil, fmt.Errorf("%s: profiles: %w", s.id, err)
	}
	sp := splitByStage(cpu.p)
	sp.sys, sp.res = s, res
	sp.allocBytes, sp.allocObjects = sampleTotal(allocs.p, "alloc_space"), sampleTotal(allocs.p, "alloc_objects")
	sp.file = filepath.Join(e.dir, s.id+".cpu.pb.gz")
	if err := writeProfile(sp.file, cpu.p); err != nil {
		return nil, err
	}
	if err := writeProfile(filepath.Join(e.dir, s.id+".allocs.pb.gz"), allocs.p); err != nil {
		return nil, err
	}
	e.logf("  profiles of %s: %s, .allocs.pb.gz", s.id, sp.file)
	return sp, nil
}

func writeProfile(path string, p *profile.Profile) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := p.Write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sampleTotal adds up one value of every sample of p.
func sampleTotal(p *profile.Profile, typ string) int64 {
	idx := slices.IndexFunc(p.SampleType, func(t *profile.ValueType) bool { return t.Type == typ })
	if idx < 0 {
		return 0
	}
	var n int64
	for _, s := range p.Sample {
		n += s.Value[idx]
	}
	return n
}

// fetchProfile records d of a profile kind ("profile" for CPU, "allocs"
// for allocations) from a /debug/pprof server.
func fetchProfile(ctx context.Context, addr, kind string, d time.Duration) (*profile.Profile, error) {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	url := fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return profile.Parse(resp.Body)
}

// splitByStage adds up a CPU profile's samples by stage.
func splitByStage(p *profile.Profile) *stageProfile {
	sp := &stageProfile{stages: map[string]time.Duration{}, seconds: time.Duration(p.DurationNanos).Seconds()}
	idx := slices.IndexFunc(p.SampleType, func(t *profile.ValueType) bool { return t.Type == "cpu" })
	if idx < 0 {
		idx = len(p.SampleType) - 1
	}
	for _, smp := range p.Sample {
		d := time.Duration(smp.Value[idx])
		sp.total += d
		sp.stages[classify(smp)] += d
	}
	return sp
}

func classify(smp *profile.Sample) string {
	var funcs []string
	for _, loc := range smp.Location {
		for _, l := range loc.Line {
			if l.Function != nil {
				funcs = append(funcs, l.Function.Name)
			}
		}
	}
	onStack := func(r *regexp.Regexp) bool { return slices.ContainsFunc(funcs, r.MatchString) }
	for _, st := range stages {
		if !slices.ContainsFunc(st.all, func(r *regexp.Regexp) bool { return !onStack(r) }) {
			return st.name
		}
	}
	return otherStage
}

// renderProfiles writes where each profiled server's CPU went, per
// issuance and by stage.
func renderProfiles(b *strings.Builder, profiles []*stageProfile) {
	if len(profiles) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("### Where the CPU goes: profiles at peak (closed loop, one run each)\n\n")
	p("A CPU profile of each server process over the measured window of one more closed-loop run (for transitca, `server.pprof` on the daemon's metrics listener; for Istio's server, the same handlers in its process), split by the functions on each sample's stack. µs of CPU per certificate issued in that run; the server's own CPU only (Vault's and the load generator's are not in it).\n\n")
	p("| stage |")
	for _, sp := range profiles {
		p(" %s (%.0f/s) | share |", sp.sys.label, sp.res.Throughput())
	}
	p("\n| --- |%s\n", strings.Repeat(" ---: | ---: |", len(profiles)))
	for _, name := range stageNames() {
		p("| %s |", name)
		for _, sp := range profiles {
			d := sp.stages[name]
			p(" %s | %s |", fmtMicros(sp.perIssuance(d)), fmtShare(d, sp.total))
		}
		p("\n")
	}
	p("| **total** |")
	for _, sp := range profiles {
		p(" **%s** | 100%% |", fmtMicros(sp.perIssuance(sp.total)))
	}
	p("\n| allocated per certificate |")
	for _, sp := range profiles {
		n := sp.issuances()
		if n <= 0 {
			p(" — | |")
			continue
		}
		p(" %.1f KB in %.0f objects | |", float64(sp.allocBytes)/n/1000, float64(sp.allocObjects)/n)
	}
	p("\n\n")
}

func fmtMicros(d time.Duration) string {
	return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond))
}

func fmtShare(d, total time.Duration) string {
	if total <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(d)/float64(total))
}

package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// sampleReport is what ca report sample prints: the issuances picked for
// a test of controls, each with its inclusion proof and the facts an
// auditor checks.
type sampleReport struct {
	From string `json:"from"`
	To   string `json:"to"`
	Seed string `json:"seed"`
	// Population is the number of issuances of the period the sample is
	// drawn from.
	Population int `json:"population"`
	// Method says how the sample was drawn, so that anyone can draw it
	// again.
	Method  string         `json:"method"`
	Samples []sampledEntry `json:"samples"`
	// Recompute is a shell command that draws the same serials from an
	// export of the same logs.
	Recompute string `json:"recompute"`
}

type sampledEntry struct {
	// Rank is SHA-256(seed "\n" serial) in hex: the sample is the n lowest.
	Rank  string      `json:"rank"`
	Shard string      `json:"shard"`
	Entry exportEntry `json:"entry"`
	Facts sampleFacts `json:"facts"`
	Proof sampleProof `json:"inclusion_proof"`
}

// sampleFacts are what a test of controls checks for each certificate.
type sampleFacts struct {
	Identity   string `json:"identity"`
	Tier       string `json:"tier"`
	Lifetime   string `json:"lifetime"`
	Requested  string `json:"requested_ttl"`
	AuthMethod string `json:"auth_method"`
	Caller     string `json:"caller"`
	TokenPod   string `json:"token_pod"`
	Cluster    string `json:"cluster"`
}

type sampleProof struct {
	Index uint64 `json:"index"`
	// Hashes are the proof's hashes, base64.
	Hashes     []string `json:"hashes"`
	Checkpoint string   `json:"checkpoint,omitempty"`
	// Verified is whether the proof was checked, here, against the signed
	// checkpoint with the verifier key; Error says why not.
	Verified bool   `json:"verified"`
	Error    string `json:"error,omitempty"`
}

// sampleRank is the rank of a serial in the sample of seed.
func sampleRank(seed, serial string) string {
	sum := sha256.Sum256([]byte(seed + "\n" + serial))
	return hex.EncodeToString(sum[:])
}

func reportSample(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca report sample", stderr)
	from := fs.String("from", "", "start of the period, inclusive (RFC 3339 or a duration from now; required)")
	to := fs.String("to", "now", "end of the period, exclusive")
	n := fs.Int("n", 25, "how many issuances to pick")
	seed := fs.String("seed", "", "the seed that makes the sample reproducible (required; record it in the working papers)")
	output := fs.String("o", "text", "output: text or json")
	var start, end time.Time
	shards, ctx, done, err := lf.connectShards(ctx, fs, args, func() (err error) {
		if *output != "text" && *output != "json" {
			return fmt.Errorf("-o %q: want text or json", *output)
		}
		if *seed == "" {
			return errors.New("--seed is required: the same seed draws the same sample")
		}
		if *n < 1 {
			return fmt.Errorf("--n %d: want at least 1", *n)
		}
		if lf.db != "" && lf.verifierKey == "" {
			return errors.New("with --db, --verifier-key is required: each inclusion proof is checked against the CA's key")
		}
		start, end, err = evidencePeriod(*from, *to)
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	vkey, err := lf.verifierKeyText()
	if err != nil {
		return err
	}
	r := &sampleReport{From: start.Format(time.RFC3339), To: end.Format(time.RFC3339), Seed: *seed,
		Method: `every issuance of the period ranked by the hex SHA-256 of "<seed>\n<serial>"; the sample is the n lowest`}
	type candidate struct {
		rank string
		s    shard
		e    *adminv1.Entry
	}
	var all []candidate
	for _, s := range shards {
		err := eachEntry(ctx, s.api, &adminv1.QueryLogRequest{Kind: adminv1.Kind_KIND_ISSUANCE, From: timestamppb.New(start), To: timestamppb.New(end)}, func(e *adminv1.Entry) {
			all = append(all, candidate{sampleRank(*seed, e.GetSerial()), s, e})
		})
		if err != nil {
			return fmt.Errorf("%s: issuance log: %w", s.name, err)
		}
	}
	r.Population = len(all)
	slices.SortFunc(all, func(a, b candidate) int { return cmp.Compare(a.rank, b.rank) })
	all = all[:min(*n, len(all))]
	verifiers := map[string]note.Verifier{}
	for _, c := range all {
		se := sampledEntry{Rank: c.rank, Shard: c.s.name, Entry: toExport(c.e, false), Facts: factsOf(c.e)}
		se.Entry.CertificateDER = ""
		se.Proof = proveSample(ctx, c.s, c.e.GetSeq(), vkey, verifiers)
		r.Samples = append(r.Samples, se)
	}
	r.Recompute = sampleRecompute(lf, shards, start, end, *seed, *n)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(r)
	}
	writeSample(stdout, r)
	return nil
}

// factsOf are the facts of an issuance a test of controls checks.
func factsOf(e *adminv1.Entry) sampleFacts {
	f := sampleFacts{
		Identity: e.GetSpiffeId(), Tier: e.GetTier(),
		Lifetime:   e.GetNotAfter().AsTime().Sub(e.GetNotBefore().AsTime()).String(),
		Requested:  cmpOrNone(durationText(e.GetRequestedTtl().AsDuration())),
		AuthMethod: cmpOrNone(e.GetAuthMethod()), Caller: cmpOrNone(cmp.Or(e.GetCallerSubject(), e.GetCallerId())),
		TokenPod: "(none)", Cluster: cmpOrNone(e.GetClusterId()),
	}
	if e.GetPodName() != "" || e.GetPodUid() != "" {
		f.TokenPod = strings.TrimSpace(e.GetNamespace() + "/" + e.GetPodName() + " (uid " + cmpOrNone(e.GetPodUid()) + ")")
	}
	return f
}

func durationText(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// proveSample fetches the inclusion proof of entry seq and checks it here,
// against the signed checkpoint, with vkey (the daemon's own key when vkey
// is "").
func proveSample(ctx context.Context, s shard, seq uint64, vkey string, verifiers map[string]note.Verifier) sampleProof {
	p := sampleProof{Index: seq, Hashes: []string{}}
	resp, err := s.api.GetInclusionProof(ctx, &adminv1.GetInclusionProofRequest{Key: &adminv1.GetInclusionProofRequest_Seq{Seq: seq}})
	if err != nil {
		p.Error = fmt.Sprintf("no inclusion proof (the entry is not yet under a signed checkpoint, or the log failed): %v", err)
		return p
	}
	for _, h := range resp.GetProof() {
		p.Hashes = append(p.Hashes, base64.StdEncoding.EncodeToString(h))
	}
	p.Checkpoint = string(resp.GetCheckpoint())
	if vkey == "" {
		cp, err := s.api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
		if err != nil {
			p.Error = err.Error()
			return p
		}
		vkey = cp.GetVerifierKey()
	}
	v := verifiers[vkey]
	if v == nil {
		if v, err = note.NewVerifier(vkey); err != nil {
			p.Error = fmt.Sprintf("verifier key: %v", err)
			return p
		}
		verifiers[vkey] = v
	}
	if _, err := store.VerifyInclusion(resp.GetCheckpoint(), v, resp.GetLeafData(), resp.GetIndex(), resp.GetProof()); err != nil {
		p.Error = fmt.Sprintf("the inclusion proof does not verify: %v", err)
		return p
	}
	p.Verified = true
	return p
}

// sampleRecompute is the command that draws the same serials from an
// export of the logs, with sha256sum, sort and jq.
func sampleRecompute(lf *logFlags, shards []shard, start, end time.Time, seed string, n int) string {
	var src []string
	for _, s := range shards {
		if len(lf.dbs) > 0 {
			src = append(src, "--db", shellQuote(s.name))
		} else {
			src = append(src, connFlags(lf, s))
		}
	}
	return fmt.Sprintf(`ca log export %s --kind issuance --from %s --to %s | jq -r .serial | while read -r s; do printf '%%s %%s\n' "$(printf '%%s\n%%s' %s "$s" | sha256sum | cut -c1-64)" "$s"; done | sort | head -n %d | cut -d' ' -f2`,
		strings.Join(src, " "), start.Format(time.RFC3339), end.Format(time.RFC3339), shellQuote(seed), n)
}

func writeSample(w io.Writer, r *sampleReport) {
	fmt.Fprintf(w, "sample of %d of the %d issuances from %s to %s, seed %s\n", len(r.Samples), r.Population, r.From, r.To, strconv.Quote(r.Seed))
	fmt.Fprintf(w, "method: %s\n", r.Method)
	for i, s := range r.Samples {
		e, f := s.Entry, s.Facts
		fmt.Fprintf(w, "\n%d. serial %s (log %s, entry %d, issued %s)\n", i+1, e.Serial, s.Shard, e.Seq, e.Time)
		for _, kv := range [][2]string{
			{"identity", f.Identity}, {"tier", f.Tier}, {"lifetime", f.Lifetime + " (" + e.NotBefore + " to " + e.NotAfter + "), requested " + f.Requested},
			{"authenticated", f.AuthMethod + " as " + f.Caller}, {"token pod", f.TokenPod}, {"cluster", f.Cluster},
		} {
			fmt.Fprintf(w, "   %-14s %s\n", kv[0], kv[1])
		}
		if s.Proof.Verified {
			cp, _ := store.ParseCheckpoint(s.Proof.Checkpoint)
			fmt.Fprintf(w, "   %-14s verified against the signed checkpoint %s of size %d (%d hashes)\n", "in the log", cp.Origin, cp.Size, len(s.Proof.Hashes))
		} else {
			fmt.Fprintf(w, "   %-14s NOT proven: %s\n", "in the log", s.Proof.Error)
		}
	}
	fmt.Fprintf(w, "\nthe same serials, drawn again from an export:\n%s\n", r.Recompute)
}

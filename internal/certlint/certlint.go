package certlint

import (
	stdx509 "crypto/x509"
	"testing"

	"github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// warnSources are the lint sources whose warnings fail a test, not only
// their errors.
var warnSources = map[lint.LintSource]bool{lint.RFC5280: true}

// registry holds the lints Check runs (see the package comment).
var registry = func() lint.Registry {
	r, err := lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{
			lint.RFC5280, lint.RFC3279, lint.RFC5480, lint.RFC5891, lint.RFC8813, lint.Community,
		},
	})
	if err != nil {
		panic("certlint: " + err.Error())
	}
	return r
}()

// Check lints cert and fails the test, naming every finding, on an error
// or fatal result of an enforced lint and on a warning of an RFC 5280 lint.
// Warnings of the other enforced sources are logged.
func Check(t testing.TB, cert *stdx509.Certificate) {
	t.Helper()
	zc, err := x509.ParseCertificate(cert.Raw)
	if err != nil {
		t.Fatalf("certlint: %s does not parse: %v", cert.Subject, err)
	}
	res := zlint.LintCertificateEx(zc, registry)
	for name, r := range res.Results {
		switch {
		case r.Status >= lint.Error, r.Status == lint.Warn && warnSources[r.LintMetadata.Source]:
			t.Errorf("certlint: %s %q: %s %s (%s): %s %s",
				kind(cert), cert.Subject, r.Status, name, r.LintMetadata.Citation, r.LintMetadata.Description, r.Details)
		case r.Status == lint.Warn:
			t.Logf("certlint: %s %q: %s %s (%s): %s %s",
				kind(cert), cert.Subject, r.Status, name, r.LintMetadata.Citation, r.LintMetadata.Description, r.Details)
		}
	}
}

func kind(c *stdx509.Certificate) string {
	switch {
	case c.IsCA && string(c.RawSubject) == string(c.RawIssuer):
		return "root"
	case c.IsCA:
		return "intermediate"
	default:
		return "leaf"
	}
}

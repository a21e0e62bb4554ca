// Package spiffeid builds SPIFFE IDs and holds the rules for their parts. A
// workload's is spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>,
// the form Istio uses (ca.ParseSPIFFEID parses it strictly).
package spiffeid

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// New returns spiffe://<trustDomain>/<segments joined by "/">. It does not
// check its arguments.
func New(trustDomain string, segments ...string) string {
	return "spiffe://" + trustDomain + "/" + strings.Join(segments, "/")
}

// Workload returns the workload ID spiffe://<trustDomain>/ns/<ns>/sa/<sa>.
// It does not check its arguments; Parse does.
func Workload(trustDomain, ns, sa string) string {
	return New(trustDomain, "ns", ns, "sa", sa)
}

// MaxBytes is the SPIFFE specification's limit on an ID's length.
const MaxBytes = 2048

// ValidTrustDomain checks a SPIFFE trust domain name: lowercase letters,
// digits, dots, dashes and underscores, at most 255 bytes.
func ValidTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	if len(td) > 255 {
		return fmt.Errorf("trust domain is %d bytes, more than 255", len(td))
	}
	for i := 0; i < len(td); i++ {
		if c := td[i]; !isLowerAlnum(c) && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("trust domain %s has the character %q; only lowercase letters, digits, '.', '-' and '_' are allowed", strconv.Quote(td), c)
		}
	}
	return nil
}

// ValidNamespace reports whether s is a valid Kubernetes namespace name: an
// RFC 1123 DNS label.
func ValidNamespace(s string) bool {
	return validDNSLabel(s)
}

// ValidServiceAccount reports whether s is a valid Kubernetes service account
// name: an RFC 1123 DNS subdomain.
func ValidServiceAccount(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !validDNSLabel(label) {
			return false
		}
	}
	return true
}

// validDNSLabel reports whether s matches [a-z0-9]([-a-z0-9]*[a-z0-9])? and is
// at most 63 bytes.
func validDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isLowerAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

// isLowerAlnum reports whether c is a lowercase ASCII letter or a digit.
func isLowerAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

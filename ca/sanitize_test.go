package ca

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestQuoteAndBound(t *testing.T) {
	cases := []struct {
		name, in string
		quote    string // want from quote
		message  string // want from boundMessage
	}{
		{"plain", "Kubernetes", `"Kubernetes"`, "Kubernetes"},
		{"control characters", "a\x1b[31m\x00b", `"a\x1b[31m\x00b"`, `a\x1b[31m\x00b`},
		{"invalid utf-8", "a\xff\xfeb", `"a\xff\xfeb"`, `a\xff\xfeb`},
		{"unicode kept", "café ✓", `"café ✓"`, "café ✓"},
		{"long", strings.Repeat("A", 1<<20),
			`"` + strings.Repeat("A", MaxQuotedBytes) + `"…[truncated, 1048576 bytes]`,
			strings.Repeat("A", MaxReasonBytes) + "…[truncated, 1048576 bytes]"},
		{"long multibyte never split", strings.Repeat("é", 1000),
			`"` + strings.Repeat("é", MaxQuotedBytes/2) + `"…[truncated, 2000 bytes]`,
			strings.Repeat("é", MaxReasonBytes/2) + "…[truncated, 2000 bytes]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := quote(tc.in); got != tc.quote {
				t.Errorf("quote = %.300q, want %.300q", got, tc.quote)
			}
			if got := boundMessage(tc.in); got != tc.message {
				t.Errorf("boundMessage = %.300q, want %.300q", got, tc.message)
			}
		})
	}
}

// FuzzBoundMessage: whatever the input, a message is short, valid UTF-8
// and free of control characters.
func FuzzBoundMessage(f *testing.F) {
	f.Add("unauthenticated: cluster \"x\" is not served")
	f.Add("\x00\xff\x1b" + strings.Repeat("é", 600))
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{boundMessage(s), quote(s), clip(s)} {
			if len(out) > MaxReasonBytes+len(truncatedMarker(len(s))) {
				t.Fatalf("%d bytes", len(out))
			}
			if !utf8.ValidString(out) || strings.IndexFunc(out, unicode.IsControl) >= 0 {
				t.Fatalf("unsafe output %q", out)
			}
		}
	})
}

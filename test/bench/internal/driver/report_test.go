package driver

import (
	"strings"
	"testing"
	"time"
)

func TestSpliceResultsKeepsTheProse(t *testing.T) {
	doc := "# Benchmarks\n\nintro\n\n" + beginMarker + "\nold results\n" + endMarker + "\n\n## Analysis\n\nkept\n"
	got := spliceResults(doc, "new results\n")
	want := "# Benchmarks\n\nintro\n\n" + beginMarker + "\nnew results\n" + endMarker + "\n\n## Analysis\n\nkept\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if again := spliceResults(got, "new results\n"); again != got {
		t.Fatal("splicing the same results twice changed the document")
	}
	fresh := spliceResults("", "r\n")
	if !strings.HasPrefix(fresh, "# Benchmarks\n\n"+beginMarker) || !strings.HasSuffix(fresh, "r\n"+endMarker+"\n") {
		t.Fatalf("new document:\n%s", fresh)
	}
}

func TestFormatting(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{0, "—"},
		{140 * time.Microsecond, "0.14 ms"},
		{5600 * time.Microsecond, "5.6 ms"},
		{29 * time.Millisecond, "29 ms"},
		{4720 * time.Millisecond, "4.72 s"},
		{12 * time.Second, "12.0 s"},
	}
	for _, tc := range cases {
		if got := fmtDur(tc.d); got != tc.want {
			t.Errorf("fmtDur(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
	if got := modeName("transitca-vault-candidate"); got != "vault candidate" {
		t.Errorf("modeName = %q", got)
	}
	if got := (memPeak{rss: 131 << 20, anon: 17 << 20}).String(); got != "131 MB (anon 17 MB)" {
		t.Errorf("memPeak = %q", got)
	}
}

package ca

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on what a caller can make the CA write. Every string that came
// from a caller (metadata, token fragments, CSR subject bits, SANs, peer
// certificate fields) reaches an error message, a log line or a log record
// only through quote, and every message that reaches a caller or a record
// goes through boundMessage, so a denial record has a size that does not
// depend on the request.
const (
	// MaxQuotedBytes is how much of one caller-supplied string is quoted.
	MaxQuotedBytes = 256
	// MaxReasonBytes bounds the message of a denial: the gRPC status the
	// caller gets and the Reason of its log entry.
	MaxReasonBytes = 1024
)

// quote returns a caller-supplied string for a message: Go-quoted (control
// characters and invalid UTF-8 escaped), cut to MaxQuotedBytes, and when
// cut, followed by a marker with the original length:
// "abc…"…[truncated, 1048576 bytes].
func quote(s string) string {
	if len(s) <= MaxQuotedBytes {
		return strconv.Quote(s)
	}
	return strconv.Quote(cutUTF8(s, MaxQuotedBytes)) + truncatedMarker(len(s))
}

// clip is quote for values printed as they are (OIDs, IP addresses,
// distinguished names, lists) when they come from the caller: cut to
// MaxQuotedBytes and escaped like boundMessage, but not quoted.
func clip(v any) string { return bound(fmt.Sprint(v), MaxQuotedBytes) }

// boundMessage makes a message safe to return or record: control
// characters and invalid UTF-8 are escaped, and the result is at most
// MaxReasonBytes plus a marker that gives the original length. It is the
// last line of defence for anything that did not pass through quote, such
// as a library's error text.
func boundMessage(msg string) string { return bound(msg, MaxReasonBytes) }

// bound escapes control characters and invalid UTF-8 in s and cuts the
// result to max bytes, followed by a truncation marker when cut.
func bound(s string, max int) string {
	clean := true
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 || unicode.IsControl(r) {
			clean = false
			break
		}
		i += n
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		piece := s[i : i+n]
		switch {
		case r == utf8.RuneError && n <= 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case unicode.IsControl(r):
			piece = strings.Trim(strconv.QuoteRune(r), "'")
		}
		if b.Len()+len(piece) > max {
			return b.String() + truncatedMarker(len(s))
		}
		b.WriteString(piece)
		i += n
	}
	return b.String()
}

// cutUTF8 returns at most n bytes of s, never splitting a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && i > n-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

func truncatedMarker(n int) string { return "…[truncated, " + strconv.Itoa(n) + " bytes]" }

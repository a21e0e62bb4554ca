package store

import (
	"math/big"
	"strings"
)

func isLowerHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// SerialHex is how the log writes a serial number: lowercase hex without
// leading zeros.
func SerialHex(n *big.Int) string { return n.Text(16) }

// NormalizeSerial turns a serial as people paste it (upper case, colons,
// leading zeros, a 0x prefix) into the log's form.
func NormalizeSerial(s string) string {
	s = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	s = strings.TrimPrefix(s, "0x")
	if t := strings.TrimLeft(s, "0"); t != "" {
		return t
	}
	if s != "" {
		return "0"
	}
	return s
}

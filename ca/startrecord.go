package ca

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Actions of the admin entries a daemon records about itself.
const (
	// StartAction is the entry a daemon appends when it starts; its
	// detail holds a StartRecord.
	StartAction = "start"
	// StopAction is the entry a daemon appends when it stops cleanly; a
	// start with no stop before it follows a crash or a kill.
	StopAction = "stop"
	// KeyCustodyAction is the entry a drill appends with what Vault
	// answered about each key (a KeyCustodyRecord).
	KeyCustodyAction = "key-custody"
)

// Where a key is kept, in KeyCustody.Where.
const (
	// KeyInVault is a Vault Transit key: Vault answered for it.
	KeyInVault = "vault-transit"
	// KeyInLocalFile is a dev-mode software key, a file in the data
	// directory.
	KeyInLocalFile = "local-dev-file"
	// KeyInMemory is the in-memory intermediate's key: generated at
	// start, never written anywhere.
	KeyInMemory = "memory"
)

// StartRecord is what a daemon records about itself when it starts, in
// the detail of its start entry (after the human-readable fields, as
// record={JSON}): the policy every later issuance is checked against,
// where each key is kept and what Vault said about it, and what the
// witness held when the log was opened.
type StartRecord struct {
	Version string `json:"version"`
	Host    string `json:"host,omitempty"`
	// Dev is true for a dev-mode daemon: local software keys, no Vault.
	Dev              bool   `json:"dev"`
	TrustDomain      string `json:"trust_domain"`
	IntermediateMode string `json:"intermediate_mode"`
	Root             string `json:"root"`
	RootKeyVersion   int    `json:"root_key_version"`
	// Tiers are every tier the daemon may issue in, its own (serving,
	// istiod, drill) included.
	Tiers       map[string]TierRecord `json:"tiers"`
	DefaultTier string                `json:"default_tier"`
	// Rules map identities to tiers, in the order they are tried.
	Rules           []RuleRecord `json:"rules"`
	AdminIdentities []string     `json:"admin_identities"`
	Custody         []KeyCustody `json:"key_custody"`
	Log             LogAtStart   `json:"log"`
}

// TierRecord is one tier of a StartRecord; durations in Go's notation.
type TierRecord struct {
	MaxTTL     string `json:"max_ttl"`
	DefaultTTL string `json:"default_ttl,omitempty"`
}

// RuleRecord is one policy rule of a StartRecord: the identities it
// matches (path.Match patterns; an empty list matches anything) and their
// tier.
type RuleRecord struct {
	Tier            string   `json:"tier"`
	Namespaces      []string `json:"namespaces,omitempty"`
	ServiceAccounts []string `json:"service_accounts,omitempty"`
	SPIFFEIDs       []string `json:"spiffe_ids,omitempty"`
	Clusters        []string `json:"clusters,omitempty"`
	DNSNames        []string `json:"dns_names,omitempty"`
}

// Witness states of LogAtStart.
const (
	// WitnessNone: the log has no witness configured.
	WitnessNone = "none"
	// WitnessEmpty: the witness held no checkpoint, so nothing outside
	// the file could show that it was rolled back.
	WitnessEmpty = "empty"
	// WitnessChecked: the log was checked to extend the witness's
	// checkpoint.
	WitnessChecked = "checked"
)

// LogAtStart is the issuance log as the daemon found it when it opened it.
type LogAtStart struct {
	// Size is the number of entries before the start entry.
	Size uint64 `json:"size"`
	// Witness is WitnessNone, WitnessEmpty or WitnessChecked;
	// WitnessSize the size of the checkpoint the witness held.
	Witness     string `json:"witness"`
	WitnessSize uint64 `json:"witness_size,omitempty"`
}

// KeyCustody is where one of the CA's keys is kept and, for a Vault key,
// Vault's own answer about it when it was recorded.
type KeyCustody struct {
	// Role is root, intermediate or checkpoint.
	Role string `json:"role"`
	// Where is KeyInVault, KeyInLocalFile or KeyInMemory.
	Where string `json:"where"`
	Mount string `json:"mount,omitempty"`
	Name  string `json:"name,omitempty"`
	// Vault's answer (GET transit/keys/:name), when Where is KeyInVault
	// and Error is empty.
	Type                 string `json:"type,omitempty"`
	Exportable           bool   `json:"exportable"`
	AllowPlaintextBackup bool   `json:"allow_plaintext_backup"`
	DeletionAllowed      bool   `json:"deletion_allowed"`
	LatestVersion        int    `json:"latest_version,omitempty"`
	MinAvailableVersion  int    `json:"min_available_version,omitempty"`
	MinDecryptionVersion int    `json:"min_decryption_version,omitempty"`
	// Error is why Vault could not be asked.
	Error string `json:"error,omitempty"`
}

// CanLeave lists the settings, as Vault answered them, by which the
// key's private part can leave Vault (exportable, allow_plaintext_backup);
// none for a key outside Vault or that Vault did not answer for.
func (k KeyCustody) CanLeave() []string {
	var out []string
	if k.Exportable {
		out = append(out, "exportable")
	}
	if k.AllowPlaintextBackup {
		out = append(out, "allow_plaintext_backup")
	}
	return out
}

// KeyCustodyRecord is the detail of a key-custody entry.
type KeyCustodyRecord struct {
	// At says what recorded it: "drill".
	At   string       `json:"at"`
	Keys []KeyCustody `json:"keys"`
}

// startRecordKey names the StartRecord in a start entry's detail.
const startRecordKey = "record"

// Detail returns the detail of a start entry: human, then the record.
func (r *StartRecord) Detail(human string) (string, error) {
	b, err := marshalRecord(r)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(human+" "+startRecordKey+"=") + string(b), nil
}

// marshalRecord is JSON on one line without HTML escaping.
func marshalRecord(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// ParseStartRecord reads the StartRecord of a start entry's detail; ok is
// false when it holds none (a log written before start entries did).
func ParseStartRecord(detail string) (r *StartRecord, ok bool, err error) {
	v, ok := DetailFields(detail)[startRecordKey]
	if !ok {
		return nil, false, nil
	}
	r = new(StartRecord)
	if err := json.Unmarshal([]byte(v), r); err != nil {
		return nil, false, fmt.Errorf("start entry: %s=: %w", startRecordKey, err)
	}
	return r, true, nil
}

// Detail returns the detail of a key-custody entry.
func (r *KeyCustodyRecord) Detail() (string, error) {
	b, err := marshalRecord(r)
	return string(b), err
}

// ParseKeyCustodyRecord reads a key-custody entry's detail.
func ParseKeyCustodyRecord(detail string) (*KeyCustodyRecord, error) {
	r := new(KeyCustodyRecord)
	if err := json.Unmarshal([]byte(detail), r); err != nil {
		return nil, fmt.Errorf("key-custody entry: %w", err)
	}
	return r, nil
}

// MaxTTLs returns the maximum lifetime of each tier of the record, and the
// tiers whose max_ttl does not parse.
func (r *StartRecord) MaxTTLs() (map[string]time.Duration, error) {
	out := make(map[string]time.Duration, len(r.Tiers))
	var errs []error
	for name, t := range r.Tiers {
		d, err := time.ParseDuration(t.MaxTTL)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("tier %q: max_ttl %q is not a positive duration", name, t.MaxTTL))
			continue
		}
		out[name] = d
	}
	return out, errors.Join(errs...)
}

// DetailFields splits an admin entry's detail into its key=value fields:
// a value is a Go-quoted string, a JSON object, or a word up to the next
// space. A word without "=" is skipped; the first of repeated keys wins.
func DetailFields(detail string) map[string]string {
	out := map[string]string{}
	s := detail
	for {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			return out
		}
		eq, sp := strings.IndexByte(s, '='), strings.IndexByte(s, ' ')
		if eq < 0 || sp >= 0 && sp < eq {
			if sp < 0 {
				return out
			}
			s = s[sp:]
			continue
		}
		key, rest := s[:eq], s[eq+1:]
		var value string
		switch {
		case strings.HasPrefix(rest, `"`):
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return out
			}
			value, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		case strings.HasPrefix(rest, "{"):
			dec := json.NewDecoder(strings.NewReader(rest))
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return out
			}
			n := dec.InputOffset()
			value, rest = rest[:n], rest[n:]
		default:
			end := strings.IndexByte(rest, ' ')
			if end < 0 {
				end = len(rest)
			}
			value, rest = rest[:end], rest[end:]
		}
		if _, seen := out[key]; !seen {
			out[key] = value
		}
		s = rest
	}
}

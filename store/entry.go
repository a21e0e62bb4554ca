package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Kind is the kind of a log entry. The zero Kind is invalid.
type Kind uint8

// Entry kinds. The numeric values are part of the record format and never
// change.
const (
	// KindIssuance records a certificate that was issued.
	KindIssuance Kind = 1
	// KindDenial records a certificate request that was refused.
	KindDenial Kind = 2
	// KindAdmin records an administrative action (rotation, drill, ...).
	KindAdmin Kind = 3
)

// String returns "issuance", "denial" or "admin".
func (k Kind) String() string {
	switch k {
	case KindIssuance:
		return "issuance"
	case KindDenial:
		return "denial"
	case KindAdmin:
		return "admin"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	switch s {
	case "issuance":
		return KindIssuance, nil
	case "denial":
		return KindDenial, nil
	case "admin":
		return KindAdmin, nil
	}
	return 0, fmt.Errorf("unknown entry kind %q (want issuance, denial or admin)", s)
}

func (k Kind) valid() bool { return k >= KindIssuance && k <= KindAdmin }

// Entry is one record of the issuance log. Which fields are set depends on
// Kind; unset fields are zero. Times are returned in UTC with nanosecond
// precision.
type Entry struct {
	// Seq is the entry's leaf index, assigned by the log (0-based,
	// contiguous). It is ignored by Append.
	Seq  uint64
	Kind Kind
	// Time is when the event happened; Append fills in Options.Now() when
	// it is zero.
	Time time.Time

	// Issuance fields (some, such as SPIFFEID and the caller fields, are
	// also meaningful for denials).

	// Serial is the certificate serial number in lowercase hex.
	Serial         string
	SPIFFEID       string
	Namespace      string
	ServiceAccount string
	Tier           string
	RequestedTTL   time.Duration
	GrantedTTL     time.Duration
	NotBefore      time.Time
	NotAfter       time.Time
	// IssuerFingerprint is the lowercase hex SHA-256 of the issuing CA
	// certificate's DER.
	IssuerFingerprint string
	IssuerKeyVersion  int
	RootKeyVersion    int
	CallerID          string
	AuthMethod        string
	CallerSubject     string
	ClusterID         string
	// Certificate is the issued certificate, DER.
	Certificate []byte

	// Denial fields.
	Code   string
	Reason string

	// Admin fields.
	Action string
	Actor  string
	Detail string

	// Caller fields added in record version 2: the pod the caller's token
	// was bound to, as the Kubernetes TokenReview API or the token's own
	// claims reported it (empty for client certificates and for tokens
	// bound to no pod).
	PodName string
	PodUID  string

	// Caller field added in record version 3: for a node agent (ztunnel)
	// that asked for another identity, the node its pod runs on.
	CallerNode string
}

// Record format versions (see doc.go for the full description). Version 2
// is version 1 plus the tags from tagPodName on, version 3 is version 2
// plus tagCallerNode; an entry is written in the lowest version that can
// hold its fields.
const (
	recordV1         = 1
	recordV2         = 2
	recordV3         = 3
	recordHeaderSize = 10 // version, kind, seq (8 bytes big-endian)
	seqOffset        = 2
)

// Field tags, in the order they must appear. Tags below tagPodName are
// those of record version 1; version 2 adds tagPodName and tagPodUID;
// version 3 adds tagCallerNode.
const (
	tagTime byte = 1 + iota
	tagSerial
	tagSPIFFEID
	tagNamespace
	tagServiceAccount
	tagTier
	tagRequestedTTL
	tagGrantedTTL
	tagNotBefore
	tagNotAfter
	tagIssuerFingerprint
	tagIssuerKeyVersion
	tagRootKeyVersion
	tagCallerID
	tagAuthMethod
	tagCallerSubject
	tagClusterID
	tagCertificate
	tagCode
	tagReason
	tagAction
	tagActor
	tagDetail
	tagPodName // record version 2 on
	tagPodUID
	tagCallerNode // record version 3 on
	tagEnd        // one past the last tag
)

// tagEndV1 and tagEndV2 are one past the last tag of record versions 1
// and 2.
const (
	tagEndV1 = tagPodName
	tagEndV2 = tagCallerNode
)

// recordVersion returns the lowest record version that holds e's fields.
func (e *Entry) recordVersion() byte {
	if e.CallerNode != "" {
		return recordV3
	}
	if e.PodName != "" || e.PodUID != "" {
		return recordV2
	}
	return recordV1
}

// Size limits enforced by Append.
const (
	maxShortField   = 4 << 10  // identifiers, names, codes
	maxLongField    = 64 << 10 // Reason, Detail
	maxCertificate  = 64 << 10
	maxSerialHexLen = 64
)

// MarshalBinary returns the entry's canonical record bytes, including e.Seq,
// in the lowest record version that holds its fields. These bytes are the Merkle leaf data: the
// leaf hash is SHA-256(0x00 || bytes). The entry must be valid.
func (e *Entry) MarshalBinary() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	return appendRecord(make([]byte, 0, e.encodedSizeHint()), e), nil
}

// UnmarshalBinary decodes record bytes produced by MarshalBinary or served
// by the log. It rejects non-canonical encodings, so that a decoded entry
// always marshals back to the same bytes.
func (e *Entry) UnmarshalBinary(data []byte) error {
	d, err := decodeRecord(data)
	if err != nil {
		return err
	}
	d.Certificate = append([]byte(nil), d.Certificate...)
	*e = *d
	return nil
}

func (e *Entry) encodedSizeHint() int {
	return 128 + len(e.SPIFFEID) + len(e.Namespace) + len(e.ServiceAccount) + len(e.Serial) +
		len(e.CallerID) + len(e.CallerSubject) + len(e.Certificate) + len(e.Reason) + len(e.Detail) + len(e.PodName) + len(e.PodUID) + len(e.CallerNode)
}

// appendRecord encodes e (already validated) after dst.
func appendRecord(dst []byte, e *Entry) []byte {
	dst = append(dst, e.recordVersion(), byte(e.Kind))
	dst = binary.BigEndian.AppendUint64(dst, e.Seq)
	dst = appendTime(dst, tagTime, e.Time)
	dst = appendString(dst, tagSerial, e.Serial)
	dst = appendString(dst, tagSPIFFEID, e.SPIFFEID)
	dst = appendString(dst, tagNamespace, e.Namespace)
	dst = appendString(dst, tagServiceAccount, e.ServiceAccount)
	dst = appendString(dst, tagTier, e.Tier)
	dst = appendInt(dst, tagRequestedTTL, int64(e.RequestedTTL))
	dst = appendInt(dst, tagGrantedTTL, int64(e.GrantedTTL))
	dst = appendTime(dst, tagNotBefore, e.NotBefore)
	dst = appendTime(dst, tagNotAfter, e.NotAfter)
	if e.IssuerFingerprint != "" {
		var fp [sha256.Size]byte
		_, _ = hex.Decode(fp[:], []byte(e.IssuerFingerprint)) // validated
		dst = append(dst, tagIssuerFingerprint)
		dst = append(dst, fp[:]...)
	}
	dst = appendInt(dst, tagIssuerKeyVersion, int64(e.IssuerKeyVersion))
	dst = appendInt(dst, tagRootKeyVersion, int64(e.RootKeyVersion))
	dst = appendString(dst, tagCallerID, e.CallerID)
	dst = appendString(dst, tagAuthMethod, e.AuthMethod)
	dst = appendString(dst, tagCallerSubject, e.CallerSubject)
	dst = appendString(dst, tagClusterID, e.ClusterID)
	dst = appendBytes(dst, tagCertificate, e.Certificate)
	dst = appendString(dst, tagCode, e.Code)
	dst = appendString(dst, tagReason, e.Reason)
	dst = appendString(dst, tagAction, e.Action)
	dst = appendString(dst, tagActor, e.Actor)
	dst = appendString(dst, tagDetail, e.Detail)
	dst = appendString(dst, tagPodName, e.PodName)
	dst = appendString(dst, tagPodUID, e.PodUID)
	dst = appendString(dst, tagCallerNode, e.CallerNode)
	return dst
}

func appendString(b []byte, tag byte, s string) []byte {
	if s == "" {
		return b
	}
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, tag byte, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendInt(b []byte, tag byte, v int64) []byte {
	if v == 0 {
		return b
	}
	return binary.AppendVarint(append(b, tag), v)
}

func appendTime(b []byte, tag byte, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return binary.AppendVarint(append(b, tag), t.UnixNano())
}

// recordSeq returns the sequence number stored in a record header.
func recordSeq(rec []byte) (uint64, bool) {
	if len(rec) < recordHeaderSize {
		return 0, false
	}
	return binary.BigEndian.Uint64(rec[seqOffset:]), true
}

// decodeRecord decodes a record strictly: unknown versions, unknown or
// repeated or out-of-order tags, zero values that should have been omitted,
// non-minimal varints, trailing bytes and a record that holds no field of
// its version (it has an encoding in a lower version) are all errors
// wrapping ErrCorrupt.
// The returned Certificate aliases data; copy it if data is not retained.
func decodeRecord(data []byte) (*Entry, error) {
	e := new(Entry)
	if err := decodeRecordInto(e, data, false); err != nil {
		return nil, err
	}
	return e, nil
}

// decodeRecordInto decodes data into e, as decodeRecord. With view, the
// strings of e share the bytes of data instead of copying them: e is then
// valid only while data is, and must not be kept (the entry scan of Verify
// and Open, which reads every record once and keeps nothing of it).
func decodeRecordInto(e *Entry, data []byte, view bool) error {
	if len(data) < recordHeaderSize {
		return fmt.Errorf("%w: record of %d bytes is shorter than its header", ErrCorrupt, len(data))
	}
	version := data[0]
	end := tagEnd
	switch version {
	case recordV1:
		end = tagEndV1
	case recordV2:
		end = tagEndV2
	case recordV3:
	default:
		return fmt.Errorf("%w: record version %d is not supported (this build reads versions %d to %d)", ErrCorrupt, version, recordV1, recordV3)
	}
	*e = Entry{Kind: Kind(data[1]), Seq: binary.BigEndian.Uint64(data[seqOffset:])}
	if !e.Kind.valid() {
		return fmt.Errorf("%w: record has unknown kind %d", ErrCorrupt, data[1])
	}
	d := decoder{b: data[recordHeaderSize:], view: view}
	last := byte(0)
	for len(d.b) > 0 && d.err == nil {
		tag := d.b[0]
		d.b = d.b[1:]
		if tag <= last || tag >= end {
			return fmt.Errorf("%w: record version %d has tag %d after tag %d", ErrCorrupt, version, tag, last)
		}
		last = tag
		switch tag {
		case tagTime:
			e.Time = d.time()
		case tagSerial:
			e.Serial = d.string()
		case tagSPIFFEID:
			e.SPIFFEID = d.string()
		case tagNamespace:
			e.Namespace = d.string()
		case tagServiceAccount:
			e.ServiceAccount = d.string()
		case tagTier:
			e.Tier = d.string()
		case tagRequestedTTL:
			e.RequestedTTL = time.Duration(d.int())
		case tagGrantedTTL:
			e.GrantedTTL = time.Duration(d.int())
		case tagNotBefore:
			e.NotBefore = d.time()
		case tagNotAfter:
			e.NotAfter = d.time()
		case tagIssuerFingerprint:
			e.IssuerFingerprint = hex.EncodeToString(d.fixed(sha256.Size))
		case tagIssuerKeyVersion:
			e.IssuerKeyVersion = int(d.int())
		case tagRootKeyVersion:
			e.RootKeyVersion = int(d.int())
		case tagCallerID:
			e.CallerID = d.string()
		case tagAuthMethod:
			e.AuthMethod = d.string()
		case tagCallerSubject:
			e.CallerSubject = d.string()
		case tagClusterID:
			e.ClusterID = d.string()
		case tagCertificate:
			e.Certificate = d.bytes()
		case tagCode:
			e.Code = d.string()
		case tagReason:
			e.Reason = d.string()
		case tagAction:
			e.Action = d.string()
		case tagActor:
			e.Actor = d.string()
		case tagDetail:
			e.Detail = d.string()
		case tagPodName:
			e.PodName = d.string()
		case tagPodUID:
			e.PodUID = d.string()
		case tagCallerNode:
			e.CallerNode = d.string()
		}
	}
	if d.err != nil {
		return fmt.Errorf("%w: record field %d: %w", ErrCorrupt, last, d.err)
	}
	if version == recordV2 && last < tagEndV1 || version == recordV3 && last < tagEndV2 {
		return fmt.Errorf("%w: record version %d holds no field of version %d (its canonical encoding is an older version)", ErrCorrupt, version, version)
	}
	return nil
}

type decoder struct {
	b    []byte
	err  error
	view bool // strings share b (see decodeRecordInto)
}

var (
	errTruncated  = errors.New("truncated")
	errNonMinimal = errors.New("non-minimal varint")
	errZeroValue  = errors.New("zero value must be omitted")
)

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	if n != uvarintLen(v) {
		d.err = errNonMinimal
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	if n != uvarintLen(uint64(v<<1)^uint64(v>>63)) {
		d.err = errNonMinimal
		return 0
	}
	d.b = d.b[n:]
	if v == 0 && d.err == nil {
		d.err = errZeroValue
	}
	return v
}

func (d *decoder) time() time.Time {
	if d.err != nil {
		return time.Time{}
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return time.Time{}
	}
	if n != uvarintLen(uint64(v<<1)^uint64(v>>63)) {
		d.err = errNonMinimal
		return time.Time{}
	}
	d.b = d.b[n:]
	return time.Unix(0, v).UTC()
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n == 0 {
		d.err = errZeroValue
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errTruncated
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	b := d.bytes()
	if d.view && len(b) > 0 {
		return unsafe.String(&b[0], len(b)) //nolint:gosec // G103: a view for decodeRecordInto's caller, which keeps nothing of it
	}
	return string(b)
}

func (d *decoder) fixed(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = errTruncated
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func uvarintLen(v uint64) int { return 1 + (bits.Len64(v|1)-1)/7 }

// validate checks an entry before it is encoded. Errors wrap ErrInvalidEntry.
func (e *Entry) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidEntry, fmt.Sprintf(format, args...))
	}
	if !e.Kind.valid() {
		return bad("unknown kind %d", uint8(e.Kind))
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"Time", e.Time}, {"NotBefore", e.NotBefore}, {"NotAfter", e.NotAfter}} {
		if !f.t.IsZero() && (f.t.Year() < 1678 || f.t.Year() > 2261) {
			return bad("%s %v is outside the representable range", f.name, f.t)
		}
	}
	for _, f := range []struct {
		name, v string
		max     int
		index   bool // used as an index key prefix: no NUL
	}{
		{"SPIFFEID", e.SPIFFEID, maxShortField, true},
		{"Namespace", e.Namespace, maxShortField, true},
		{"ServiceAccount", e.ServiceAccount, maxShortField, false},
		{"Tier", e.Tier, maxShortField, false},
		{"CallerID", e.CallerID, maxShortField, false},
		{"AuthMethod", e.AuthMethod, maxShortField, false},
		{"CallerSubject", e.CallerSubject, maxShortField, false},
		{"ClusterID", e.ClusterID, maxShortField, false},
		{"Code", e.Code, maxShortField, false},
		{"Reason", e.Reason, maxLongField, false},
		{"Action", e.Action, maxShortField, false},
		{"Actor", e.Actor, maxShortField, false},
		{"Detail", e.Detail, maxLongField, false},
		{"PodName", e.PodName, maxShortField, false},
		{"PodUID", e.PodUID, maxShortField, false},
		{"CallerNode", e.CallerNode, maxShortField, false},
	} {
		if len(f.v) > f.max {
			return bad("%s is %d bytes, more than %d", f.name, len(f.v), f.max)
		}
		if !utf8.ValidString(f.v) {
			return bad("%s is not valid UTF-8", f.name)
		}
		if f.index && strings.IndexByte(f.v, 0) >= 0 {
			return bad("%s contains a NUL byte", f.name)
		}
	}
	if e.Serial != "" {
		if len(e.Serial) > maxSerialHexLen || !isLowerHex(e.Serial) {
			return bad("Serial %q is not lowercase hex of at most %d digits", e.Serial, maxSerialHexLen)
		}
	}
	if e.IssuerFingerprint != "" && (len(e.IssuerFingerprint) != 2*sha256.Size || !isLowerHex(e.IssuerFingerprint)) {
		return bad("IssuerFingerprint %q is not a lowercase hex SHA-256", e.IssuerFingerprint)
	}
	if len(e.Certificate) > maxCertificate {
		return bad("Certificate is %d bytes, more than %d", len(e.Certificate), maxCertificate)
	}
	switch e.Kind {
	case KindIssuance:
		switch {
		case e.Serial == "":
			return bad("issuance without Serial")
		case !strings.HasPrefix(e.SPIFFEID, "spiffe://"):
			return bad("issuance SPIFFEID %q is not a spiffe:// URI", e.SPIFFEID)
		case len(e.Certificate) == 0:
			return bad("issuance without Certificate")
		case e.IssuerFingerprint == "":
			return bad("issuance without IssuerFingerprint")
		case e.NotBefore.IsZero() || e.NotAfter.IsZero():
			return bad("issuance without NotBefore/NotAfter")
		case !e.NotAfter.After(e.NotBefore):
			return bad("issuance NotAfter %v is not after NotBefore %v", e.NotAfter, e.NotBefore)
		}
	case KindDenial, KindAdmin:
		if e.Serial != "" || len(e.Certificate) != 0 {
			return bad("%v entry carries a Serial or Certificate", e.Kind)
		}
		if e.Kind == KindDenial && e.Code == "" && e.Reason == "" {
			return bad("denial without Code or Reason")
		}
		if e.Kind == KindAdmin && e.Action == "" {
			return bad("admin entry without Action")
		}
	}
	return nil
}

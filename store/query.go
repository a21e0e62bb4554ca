package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Query selects entries. Set fields are combined with AND. One index is
// scanned, chosen in this order: Serial, SPIFFEID, Namespace, Issuer, the
// time range (From/To), the expiry range (ValidAt/ExpiringBefore), else the
// whole log; the other fields filter.
//
// Results are ordered by the scanned index: by Seq for Serial, SPIFFEID,
// Namespace, Issuer and whole-log scans; by Time (then Seq) for a time
// range; by NotAfter (then Seq) for an expiry range. Newest reverses it.
type Query struct {
	// Serial is a certificate serial in hex (case-insensitive).
	Serial    string
	SPIFFEID  string
	Namespace string
	// Issuer is the hex SHA-256 of the issuing CA certificate.
	Issuer string
	Kind   *Kind
	// Cluster is the cluster ID the entry's caller presented (an exact
	// match); it filters, no index serves it.
	Cluster string
	// From (inclusive) and To (exclusive) bound Entry.Time; zero means
	// unbounded.
	From, To time.Time
	// ValidAt selects issuances with NotBefore <= ValidAt <= NotAfter.
	ValidAt time.Time
	// ExpiringBefore selects issuances with NotAfter < ExpiringBefore.
	ExpiringBefore time.Time
	// Newest returns the newest (highest key) first; default oldest first.
	Newest bool
	// Limit is the page size: default 100, at most 10000 (larger values
	// are capped).
	Limit int
	// MaxBytes, when positive, bounds a page by the size of its entries'
	// records (Entry.MarshalBinary): the page ends before the entry that
	// would take it past MaxBytes, and its page token continues from
	// there. A page holds at least one entry, however large. It bounds
	// the message a page is served in; like Limit, it may change between
	// the pages of one query.
	MaxBytes int
	// PageToken continues a previous Query with the same fields (except
	// Limit) from where it stopped.
	PageToken string
}

const (
	defaultQueryLimit = 100
	maxQueryLimit     = 10000
	tokenVersion      = 1
)

// maxQueryScan bounds the index keys one Query call examines. A call that
// reaches it returns the matches so far (possibly none) and a page token to
// continue. A variable for tests.
var maxQueryScan = 100_000

// scan plans: which bucket is scanned and over which key range.
type scanPlan struct {
	id     byte // 0: the entries bucket; 1+indexID: an index
	bucket []byte
	lo, hi []byte // [lo, hi); nil means unbounded
	// inEpochs, when set, is the key prefix scanned inside every epoch of
	// an epoch-prefixed index (the keys epoch || inEpochs || ...).
	inEpochs []byte
}

const planEntries = 0

// Query returns up to q.Limit entries matching q, and a page token to pass
// in q.PageToken for the next page ("" when there are no more results). A
// page may hold fewer than Limit entries, even none, while the token is
// not empty: keep paging until the token is "".
func (l *Log) Query(ctx context.Context, q Query) ([]*Entry, string, error) {
	if err := l.readable(ctx); err != nil {
		return nil, "", err
	}
	if err := q.normalize(); err != nil {
		return nil, "", err
	}
	if q.Serial != "" {
		return l.querySerial(ctx, &q)
	}
	plan := q.plan(l.epochs)
	fp := q.fingerprint()
	if q.PageToken != "" {
		last, err := decodeToken(q.PageToken, plan.id, fp)
		if err != nil {
			return nil, "", err
		}
		if q.Newest {
			plan.hi = last
		} else {
			plan.lo = append(bytes.Clone(last), 0)
		}
	}

	var out []*Entry
	var token string
	size := 0         // bytes of the records in out
	var outKey []byte // the key of the last entry in out
	err := l.view(func(tx *bolt.Tx) error {
		if plan.id == 1+byte(idxNotAfter) && !q.ValidAt.IsZero() {
			// A certificate valid at T has NotAfter <= T + the longest
			// validity in the log.
			if end := q.ValidAt.Add(readMaxValidity(tx)); end.Year() <= 2261 {
				bound := timeKey(end.Add(time.Nanosecond))
				if plan.hi == nil || bytes.Compare(bound, plan.hi) < 0 {
					plan.hi = bound
				}
			}
		}
		entries := tx.Bucket(bucketEntries)
		sc := newPlanCursor(tx.Bucket(plan.bucket).Cursor(), &plan, q.Newest)
		k, v := sc.first()
		step := sc.next
		inRange := sc.inRange
		for scanned := 0; inRange(k); k, v = step() {
			if scanned++; scanned%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if len(k) < 8 {
				return fmt.Errorf("log %q: %w: malformed key %x in bucket %q", l.path, ErrCorrupt, k, plan.bucket)
			}
			seq := binary.BigEndian.Uint64(k[len(k)-8:])
			rec := v
			if plan.id != planEntries {
				if rec = entries.Get(k[len(k)-8:]); rec == nil {
					return fmt.Errorf("log %q: %w: %s index points to missing entry %d", l.path, ErrCorrupt, plan.name(), seq)
				}
			}
			e, err := decodeRecord(rec)
			if err != nil {
				return fmt.Errorf("log %q: entry %d: %w", l.path, seq, err)
			}
			if q.match(e) {
				if q.MaxBytes > 0 && len(out) > 0 && size+len(rec) > q.MaxBytes {
					// The next page starts with this entry.
					token = encodeToken(plan.id, fp, outKey)
					return nil
				}
				e.Certificate = bytes.Clone(e.Certificate)
				out = append(out, e)
				if q.MaxBytes > 0 {
					size += len(rec)
					outKey = append(outKey[:0], k...)
				}
			}
			if len(out) == q.Limit || scanned >= maxQueryScan {
				last := bytes.Clone(k)
				if nk, _ := step(); inRange(nk) {
					token = encodeToken(plan.id, fp, last)
				}
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, token, nil
}

func (l *Log) querySerial(ctx context.Context, q *Query) ([]*Entry, string, error) {
	if q.PageToken != "" {
		return nil, "", fmt.Errorf("%w: a serial query has a single page", ErrInvalidQuery)
	}
	var out []*Entry
	err := l.view(func(tx *bolt.Tx) error {
		entries := tx.Bucket(bucketEntries)
		last := epochOf(max(entries.Sequence(), 1) - 1)
		seq, rec, found, err := findSerial(tx.Bucket(bucketBySerial), entries, q.Serial, l.epochs, last)
		if err != nil {
			return fmt.Errorf("log %q: %w", l.path, err)
		}
		if !found {
			return nil
		}
		e, err := decodeStored(rec, seq)
		if err != nil {
			return fmt.Errorf("log %q: %w", l.path, err)
		}
		if q.match(e) {
			out = append(out, e)
		}
		return nil
	})
	return out, "", err
}

func (q *Query) normalize() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidQuery, fmt.Sprintf(format, args...))
	}
	switch {
	case q.Limit < 0:
		return bad("negative limit %d", q.Limit)
	case q.Limit == 0:
		q.Limit = defaultQueryLimit
	case q.Limit > maxQueryLimit:
		q.Limit = maxQueryLimit
	}
	if q.MaxBytes < 0 {
		return bad("negative page size %d bytes", q.MaxBytes)
	}
	q.Serial = strings.ToLower(q.Serial)
	if q.Serial != "" && !isLowerHex(q.Serial) {
		return bad("serial %q is not hex", q.Serial)
	}
	q.Issuer = strings.ToLower(q.Issuer)
	if q.Issuer != "" && (len(q.Issuer) != 2*sha256.Size || !isLowerHex(q.Issuer)) {
		return bad("issuer %q is not a hex SHA-256", q.Issuer)
	}
	if strings.IndexByte(q.SPIFFEID, 0) >= 0 || strings.IndexByte(q.Namespace, 0) >= 0 {
		return bad("NUL byte in SPIFFE ID or namespace")
	}
	if q.Kind != nil && !q.Kind.valid() {
		return bad("unknown kind %d", uint8(*q.Kind))
	}
	if !q.From.IsZero() && !q.To.IsZero() && q.To.Before(q.From) {
		return bad("To %v is before From %v", q.To, q.From)
	}
	for _, t := range []time.Time{q.From, q.To, q.ValidAt, q.ExpiringBefore} {
		if !t.IsZero() && (t.Year() < 1678 || t.Year() > 2261) {
			return bad("time %v is outside the representable range", t)
		}
	}
	return nil
}

// plan chooses the index a query scans, in a file of the given layout.
func (q *Query) plan(epochs bool) scanPlan {
	index := func(id indexID, lo, hi []byte) scanPlan {
		return scanPlan{id: 1 + byte(id), bucket: indexBuckets[id], lo: lo, hi: hi}
	}
	prefix := func(id indexID, p []byte) scanPlan { return index(id, p, keySuccessor(p)) }
	inEpochs := func(id indexID, p []byte) scanPlan {
		sp := index(id, nil, nil)
		sp.inEpochs = p
		return sp
	}
	timeOrNil := func(t time.Time) []byte {
		if t.IsZero() {
			return nil
		}
		return timeKey(t)
	}
	switch {
	case q.SPIFFEID != "" && epochs:
		return inEpochs(idxSPIFFEID, nameHash(q.SPIFFEID))
	case q.SPIFFEID != "":
		return prefix(idxSPIFFEID, append([]byte(q.SPIFFEID), 0))
	case q.Namespace != "" && epochs:
		return inEpochs(idxNamespace, append([]byte(q.Namespace), 0))
	case q.Namespace != "":
		return prefix(idxNamespace, append([]byte(q.Namespace), 0))
	case q.Issuer != "":
		return prefix(idxIssuer, issuerKey(q.Issuer, epochs))
	case !q.From.IsZero() || !q.To.IsZero():
		return index(idxTime, timeOrNil(q.From), timeOrNil(q.To))
	case !q.ValidAt.IsZero() || !q.ExpiringBefore.IsZero():
		return index(idxNotAfter, timeOrNil(q.ValidAt), timeOrNil(q.ExpiringBefore))
	}
	return scanPlan{id: planEntries, bucket: bucketEntries}
}

func (p scanPlan) name() string {
	if p.id == planEntries {
		return "entries"
	}
	return indexNames[p.id-1]
}

func (q *Query) match(e *Entry) bool {
	switch {
	case q.Serial != "" && (e.Kind != KindIssuance || e.Serial != q.Serial),
		q.SPIFFEID != "" && e.SPIFFEID != q.SPIFFEID,
		q.Namespace != "" && e.Namespace != q.Namespace,
		q.Issuer != "" && e.IssuerFingerprint != q.Issuer,
		q.Kind != nil && e.Kind != *q.Kind,
		q.Cluster != "" && e.ClusterID != q.Cluster,
		!q.From.IsZero() && e.Time.Before(q.From),
		!q.To.IsZero() && !e.Time.Before(q.To):
		return false
	}
	if !q.ValidAt.IsZero() && (e.Kind != KindIssuance || e.NotBefore.After(q.ValidAt) || e.NotAfter.Before(q.ValidAt)) {
		return false
	}
	if !q.ExpiringBefore.IsZero() && (e.Kind != KindIssuance || !e.NotAfter.Before(q.ExpiringBefore)) {
		return false
	}
	return true
}

// fingerprint binds a page token to the query fields (not Limit).
func (q *Query) fingerprint() []byte {
	h := sha256.New()
	str := func(s string) {
		h.Write(binary.AppendUvarint(nil, uint64(len(s))))
		h.Write([]byte(s))
	}
	tm := func(t time.Time) {
		if t.IsZero() {
			h.Write([]byte{0})
			return
		}
		h.Write(append([]byte{1}, timeKey(t)...))
	}
	str(q.Serial)
	str(q.SPIFFEID)
	str(q.Namespace)
	str(q.Issuer)
	if q.Kind != nil {
		h.Write([]byte{1, byte(*q.Kind)})
	} else {
		h.Write([]byte{0})
	}
	tm(q.From)
	tm(q.To)
	tm(q.ValidAt)
	tm(q.ExpiringBefore)
	if q.Cluster != "" { // after the fields older tokens were made of
		h.Write([]byte{2})
		str(q.Cluster)
	}
	if q.Newest {
		h.Write([]byte{1})
	} else {
		h.Write([]byte{0})
	}
	return h.Sum(nil)[:8]
}

// A page token is base64url(version || plan id || query fingerprint (8) ||
// last key scanned).
func encodeToken(plan byte, fp, last []byte) string {
	b := append([]byte{tokenVersion, plan}, fp...)
	return base64.RawURLEncoding.EncodeToString(append(b, last...))
}

func decodeToken(tok string, plan byte, fp []byte) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 2+len(fp)+8 || b[0] != tokenVersion {
		return nil, fmt.Errorf("%w: malformed page token", ErrInvalidQuery)
	}
	if b[1] != plan || !bytes.Equal(b[2:2+len(fp)], fp) {
		return nil, fmt.Errorf("%w: page token belongs to a different query", ErrInvalidQuery)
	}
	return b[2+len(fp):], nil
}

package store

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// withPod adds the fields of record version 2 to an entry.
func withPod(e *Entry) *Entry {
	e.PodName = "web-7d9f8b-x2x4z"
	e.PodUID = "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"
	return e
}

// withNode adds the field of record version 3 to an entry: the node of an
// impersonating caller's pod.
func withNode(e *Entry) *Entry {
	e.CallerNode = "node-a.example"
	return e
}

func TestRecordRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entry   *Entry
		version byte
	}{
		{"issuance", testEntry(3, KindIssuance), recordV1},
		{"denial", testEntry(3, KindDenial), recordV1},
		{"admin", testEntry(3, KindAdmin), recordV1},
		{"issuance with pod", withPod(testEntry(3, KindIssuance)), recordV2},
		{"denial with pod", withPod(testEntry(3, KindDenial)), recordV2},
		{"issuance with pod uid only", func() *Entry { e := testEntry(3, KindIssuance); e.PodUID = "u"; return e }(), recordV2},
		{"issuance with pod name only", func() *Entry { e := testEntry(3, KindIssuance); e.PodName = "p"; return e }(), recordV2},
		{"issuance with pod and node", withNode(withPod(testEntry(3, KindIssuance))), recordV3},
		{"denial with pod and node", withNode(withPod(testEntry(3, KindDenial))), recordV3},
		{"issuance with node only", withNode(testEntry(3, KindIssuance)), recordV3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.entry
			e.Seq = 42
			b, err := e.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if b[0] != tc.version {
				t.Fatalf("record version %d, want %d", b[0], tc.version)
			}
			var got Entry
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&got, e) {
				t.Fatalf("round trip:\n%+v\nwant\n%+v", got, *e)
			}
			b2, _ := got.MarshalBinary()
			if !bytes.Equal(b, b2) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

// The record format is hashed into signed checkpoints: it must never
// change. The golden files pin the version 1 encoding (entries without pod
// fields, which versions 2 and 3 left byte for byte as they were), the
// version 2 encoding (which version 3 left as it was) and the version 3
// encoding.
func TestRecordGolden(t *testing.T) {
	t.Run("v1", func(t *testing.T) { checkRecordGolden(t, "record_v1.golden", func(e *Entry) *Entry { return e }) })
	t.Run("v2", func(t *testing.T) { checkRecordGolden(t, "record_v2.golden", withPod) })
	t.Run("v3", func(t *testing.T) {
		checkRecordGolden(t, "record_v3.golden", func(e *Entry) *Entry { return withNode(withPod(e)) })
	})
}

func checkRecordGolden(t *testing.T, name string, edit func(*Entry) *Entry) {
	var sb strings.Builder
	for _, kind := range []Kind{KindIssuance, KindDenial, KindAdmin} {
		e := testEntry(5, kind)
		if kind == KindIssuance {
			e.Certificate = []byte{0x30, 0x03, 0x02, 0x01, 0x05}
		}
		e.Seq = 1234567
		e.Time = time.Unix(0, 0).UTC() // present, and zero nanoseconds
		b, err := edit(e).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		sb.WriteString(kind.String() + " " + hex.EncodeToString(b) + "\n")
	}
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sb.String() != string(want) {
		t.Fatalf("record encoding changed; records already in logs would no longer verify.\ngot:\n%s\nwant:\n%s", sb.String(), want)
	}
}

func TestDecodeRejectsNonCanonical(t *testing.T) {
	e := testEntry(3, KindAdmin)
	good, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	header := good[:recordHeaderSize]
	rec := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{header}, parts...), nil) }
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"short header", good[:5]},
		{"unknown version", append([]byte{4}, good[1:]...)},
		{"version 1 with a version 2 tag", rec([]byte{tagPodName, 1, 'p'})},
		{"version 2 without a version 2 tag", append([]byte{recordV2}, good[1:]...)},
		{"version 2 with an unknown tag", append(append([]byte{recordV2}, good[1:]...), tagPodName, 1, 'p', tagEnd, 0)},
		{"version 2 with a version 3 tag", append(append([]byte{recordV2}, good[1:]...), tagPodName, 1, 'p', tagCallerNode, 1, 'n')},
		{"version 3 without a version 3 tag", append(append([]byte{recordV3}, good[1:]...), tagPodName, 1, 'p')},
		{"version 3 with an unknown tag", append(append([]byte{recordV3}, good[1:]...), tagCallerNode, 1, 'n', tagEnd, 0)},
		{"unknown kind", append([]byte{recordV1, 9}, good[2:]...)},
		{"unknown tag", rec([]byte{tagEnd, 0})},
		{"repeated tag", rec([]byte{tagTier, 1, 'a', tagTier, 1, 'b'})},
		{"tags out of order", rec([]byte{tagTier, 1, 'a', tagTime, 2})},
		{"empty string present", rec([]byte{tagTier, 0})},
		{"zero int present", rec([]byte{tagGrantedTTL, 0})},
		{"non-minimal varint", rec([]byte{tagTier, 0x81, 0x00, 'a'})},
		{"truncated string", rec([]byte{tagTier, 5, 'a'})},
		{"truncated fingerprint", rec([]byte{tagIssuerFingerprint, 1, 2, 3})},
		{"truncated varint", rec([]byte{tagGrantedTTL, 0x80})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Entry
			if err := got.UnmarshalBinary(tc.data); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("UnmarshalBinary: %v, want ErrCorrupt", err)
			}
		})
	}
}

// Any record that decodes must re-encode to exactly the same bytes:
// otherwise two encodings of one entry would hash differently.
func FuzzDecodeRecord(f *testing.F) {
	for _, kind := range []Kind{KindIssuance, KindDenial, KindAdmin} {
		b, err := testEntry(9, kind).MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if b, err = withPod(testEntry(9, kind)).MarshalBinary(); err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{recordV1, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{recordV2, 1, 0, 0, 0, 0, 0, 0, 0, 0, tagPodUID, 1, 'u'})
	f.Add([]byte{recordV3, 1, 0, 0, 0, 0, 0, 0, 0, 0, tagCallerNode, 1, 'n'})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeRecord(data)
		if err != nil {
			return
		}
		if got := appendRecord(nil, e); !bytes.Equal(got, data) {
			t.Fatalf("decoded record re-encodes differently:\n in %x\nout %x", data, got)
		}
	})
}

func FuzzParseCheckpoint(f *testing.F) {
	f.Add("origin\n10\n" + strings.Repeat("A", 43) + "=\n")
	f.Add("o\n0\n\n")
	f.Fuzz(func(t *testing.T, text string) {
		cp, err := ParseCheckpoint(text)
		if err != nil {
			return
		}
		again, err := ParseCheckpoint(cp.String())
		if err != nil || again.Size != cp.Size || !bytes.Equal(again.Root, cp.Root) || again.Origin != cp.Origin {
			t.Fatalf("checkpoint %q does not round-trip: %+v, %v", text, again, err)
		}
	})
}

func TestKindString(t *testing.T) {
	for _, k := range []Kind{KindIssuance, KindDenial, KindAdmin} {
		got, err := ParseKind(k.String())
		if err != nil || got != k {
			t.Fatalf("ParseKind(%q) = %v, %v", k.String(), got, err)
		}
	}
	if _, err := ParseKind("bogus"); err == nil {
		t.Fatal("ParseKind(bogus) succeeded")
	}
}

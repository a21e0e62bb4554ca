package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/store"
)

// An entry's pod (record version 2) reaches "ca log export" through the
// admin API's form, under stable JSON names; an entry without one has no
// pod keys at all.
func TestExportPod(t *testing.T) {
	e := &store.Entry{
		Seq: 7, Kind: store.KindDenial, Time: time.Unix(1800000000, 0), Code: "PermissionDenied", Reason: "r",
		SPIFFEID: "spiffe://cluster.local/ns/shop/sa/web", AuthMethod: string(ca.AuthTokenReview),
		PodName: "web-0", PodUID: "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a",
	}
	b, err := json.Marshal(toExport(ca.EntryToProto(e, nil), false))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"pod_name":"web-0"`, `"pod_uid":"2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("export %s lacks %s", b, want)
		}
	}
	e.PodName, e.PodUID = "", ""
	if b, _ := json.Marshal(toExport(ca.EntryToProto(e, nil), false)); strings.Contains(string(b), "pod_") {
		t.Errorf("export of an entry without a pod: %s", b)
	}
}

// An impersonation's entry (record version 3) names the caller's node
// under caller_node, beside the caller and the identity asked for.
func TestExportCallerNode(t *testing.T) {
	e := &store.Entry{
		Seq: 8, Kind: store.KindDenial, Time: time.Unix(1800000000, 0), Code: "PermissionDenied", Reason: "r",
		SPIFFEID: "spiffe://cluster.local/ns/shop/sa/db", CallerID: "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
		PodName: "ztunnel-x", PodUID: "u-1", CallerNode: "node-a",
	}
	b, err := json.Marshal(toExport(ca.EntryToProto(e, nil), false))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"caller_node":"node-a"`, `"caller_id":"spiffe://cluster.local/ns/istio-system/sa/ztunnel"`, `"spiffe_id":"spiffe://cluster.local/ns/shop/sa/db"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("export %s lacks %s", b, want)
		}
	}
}

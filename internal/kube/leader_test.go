package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// replica is one daemon's Kubernetes side: an elector and its own
// controller, with its own bundle so that the ConfigMaps show who wrote.
type replica struct {
	id      string
	src     *bundleSource
	bc      *BundleController
	leading atomic.Bool
	stop    func()
}

const testLease = "transitca" // the name the Role allows

func (c *cluster) replica(t *testing.T, id, sel string) *replica {
	t.Helper()
	r := &replica{id: id, src: newSource()}
	bc, err := NewBundleController(BundleOptions{Client: c.daemon, Bundle: r.src.get, NamespaceSelector: mustSelector(t, sel), Resync: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r.bc = bc
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Elect(ctx, Election{
			Client: c.daemon, Namespace: "istio-system", LeaseName: testLease, Identity: id,
			LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond,
			OnLeading: r.leading.Store, Logger: slog.New(slog.DiscardHandler),
		}, bc)
	}()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Elect %s: %v", id, err)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

func (c *cluster) lease(t *testing.T) *coordinationv1.Lease {
	t.Helper()
	l, err := c.admin.CoordinationV1().Leases("istio-system").Get(t.Context(), testLease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (c *cluster) holder(t *testing.T) string {
	t.Helper()
	l, err := c.admin.CoordinationV1().Leases("istio-system").Get(t.Context(), testLease, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if h := l.Spec.HolderIdentity; h != nil {
		return *h
	}
	return ""
}

// Two replicas against one Lease: exactly one writes; when it stops, the
// other takes over; a leader whose Lease is taken stops writing.
func TestLeaderElectionOneWriterAtATime(t *testing.T) {
	c := newCluster(t)
	id := randHex(6)
	sel := "transitca-test=" + id
	ns1, ns2 := c.namespace(t, map[string]string{"transitca-test": id}), c.namespace(t, map[string]string{"transitca-test": id})
	nss := []string{ns1, ns2}
	allHold := func(b []byte) func() error {
		return func() error {
			for _, ns := range nss {
				if err := c.holds(t, ns, b); err != nil {
					return err
				}
			}
			return nil
		}
	}

	a := c.replica(t, "a-"+id, sel)
	eventually(t, 10*time.Second, func() error {
		if h := c.holder(t); h != a.id {
			return fmt.Errorf("lease holder %q, want %q", h, a.id)
		}
		return nil
	})
	b := c.replica(t, "b-"+id, sel)
	eventually(t, 10*time.Second, allHold(a.src.get()))

	// b follows: for several of its resync periods, it writes nothing and
	// the ConfigMaps keep a's bundle.
	time.Sleep(3 * time.Second)
	if err := allHold(a.src.get())(); err != nil {
		t.Fatalf("while a leads: %v", err)
	}
	if b.leading.Load() || b.bc.Writes() != 0 {
		t.Fatalf("follower b: leading %v, %d writes", b.leading.Load(), b.bc.Writes())
	}
	if c.holder(t) != a.id {
		t.Fatalf("lease holder %q while a runs", c.holder(t))
	}

	// a stops (its context ends): it releases the Lease, b takes over at
	// once and writes its own bundle.
	start := time.Now()
	a.stop()
	aWrites := a.bc.Writes()
	eventually(t, 5*time.Second, func() error {
		if h := c.holder(t); h != b.id {
			return fmt.Errorf("lease holder %q, want %q", h, b.id)
		}
		return nil
	})
	eventually(t, 5*time.Second, allHold(b.src.get()))
	t.Logf("b took over and rewrote the ConfigMaps %v after a stopped", time.Since(start).Round(time.Millisecond))
	if a.bc.Writes() != aWrites || a.leading.Load() {
		t.Fatalf("a wrote after it stopped")
	}

	// Someone else takes the Lease: b cannot renew, and within its renew
	// deadline it stops writing. An edit then stays until b leads again.
	l := c.lease(t)
	thief, dur, now := "thief", int32(4), metav1.NewMicroTime(time.Now())
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.AcquireTime, l.Spec.RenewTime = &thief, &dur, &now, &now
	if _, err := c.admin.CoordinationV1().Leases("istio-system").Update(t.Context(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 4*time.Second, func() error {
		if b.leading.Load() {
			return fmt.Errorf("b still leads")
		}
		return nil
	})
	cm := c.configMap(t, ns1)
	cm.Data[RootCertKey] = "edited while nobody leads"
	if _, err := c.admin.CoreV1().ConfigMaps(ns1).Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // several of b's resync periods
	if got := c.configMap(t, ns1).Data[RootCertKey]; got != "edited while nobody leads" {
		t.Fatal("b repaired the ConfigMap without the Lease")
	}
	// The thief never renews: after its lease duration b wins again and
	// repairs the edit.
	eventually(t, 10*time.Second, allHold(b.src.get()))
	if h := c.holder(t); h != b.id {
		t.Fatalf("lease holder %q after the thief's lease expired, want %q", h, b.id)
	}
}

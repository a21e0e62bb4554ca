package kube

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// With no selector, every namespace gets the ConfigMap, and so does a
// namespace created later.
func TestBundleReachesEveryNamespace(t *testing.T) {
	c := newCluster(t)
	src := newSource()
	c.controller(t, src, "", time.Minute, nil)

	eventually(t, 10*time.Second, func() error {
		nss, err := c.admin.CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		var errs []error
		for _, ns := range nss.Items {
			if ns.DeletionTimestamp == nil {
				errs = append(errs, c.holds(t, ns.Name, src.get()))
			}
		}
		return errors.Join(errs...)
	})

	start := time.Now()
	later := c.namespace(t, nil)
	eventually(t, 5*time.Second, func() error { return c.holds(t, later, src.get()) })
	t.Logf("a new namespace had its ConfigMap after %v", time.Since(start).Round(time.Millisecond))
}

// Edits and deletions are undone; a bundle change reaches every selected
// namespace at once when the controller is told, and within a resync when
// it is not.
func TestBundleRepairedAndUpdated(t *testing.T) {
	c := newCluster(t)
	src := newSource()
	sel := "transitca-test=" + randHex(6)
	lbl := map[string]string{"transitca-test": strings.TrimPrefix(sel, "transitca-test=")}
	ns1, ns2 := c.namespace(t, lbl), c.namespace(t, lbl)
	bc, _ := c.controller(t, src, sel, 2*time.Second, nil)
	for _, ns := range []string{ns1, ns2} {
		eventually(t, 10*time.Second, func() error { return c.holds(t, ns, src.get()) })
	}

	cms := c.admin.CoreV1().ConfigMaps(ns1)
	edits := []struct {
		name string
		edit func() error
	}{
		{"data changed", func() error {
			cm := c.configMap(t, ns1)
			cm.Data[RootCertKey] = "not a bundle"
			_, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{})
			return err
		}},
		{"extra key added", func() error {
			cm := c.configMap(t, ns1)
			cm.Data["extra.pem"] = "x"
			cm.BinaryData = map[string][]byte{"blob": {1}}
			_, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{})
			return err
		}},
		{"label removed", func() error {
			cm := c.configMap(t, ns1)
			delete(cm.Labels, ConfigLabel)
			_, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{})
			return err
		}},
		{"deleted", func() error { return cms.Delete(t.Context(), RootCertConfigMap, metav1.DeleteOptions{}) }},
	}
	for _, e := range edits {
		t.Run(e.name, func(t *testing.T) {
			if err := e.edit(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			eventually(t, 5*time.Second, func() error { return c.holds(t, ns1, src.get()) })
			t.Logf("repaired after %v", time.Since(start).Round(time.Millisecond))
		})
	}

	t.Run("told of a change", func(t *testing.T) {
		src.set(fakeBundle())
		bc.BundleChanged()
		for _, ns := range []string{ns1, ns2} {
			eventually(t, 3*time.Second, func() error { return c.holds(t, ns, src.get()) })
		}
	})
	t.Run("not told of a change", func(t *testing.T) {
		src.set(fakeBundle())
		for _, ns := range []string{ns1, ns2} {
			eventually(t, 6*time.Second, func() error { return c.holds(t, ns, src.get()) })
		}
	})
	t.Run("nothing to do writes nothing", func(t *testing.T) {
		// Safe to run twice: resyncs of a matching ConfigMap write nothing.
		before := bc.Writes()
		time.Sleep(5 * time.Second) // two resyncs
		if after := bc.Writes(); after != before {
			t.Fatalf("%d writes while every ConfigMap matched", after-before)
		}
	})
}

// Only namespaces the selector picks get the ConfigMap; one that gains the
// label gets it then. A namespace being deleted is skipped, without
// errors.
func TestBundleNamespaceSelector(t *testing.T) {
	c := newCluster(t)
	src := newSource()
	id := randHex(6)
	sel := "transitca-test=" + id + ",mesh in (on,yes)"
	in1 := c.namespace(t, map[string]string{"transitca-test": id, "mesh": "on"})
	in2 := c.namespace(t, map[string]string{"transitca-test": id, "mesh": "yes"})
	out := c.namespace(t, map[string]string{"transitca-test": id, "mesh": "off"})
	unlabelled := c.namespace(t, nil)
	var logs logBuffer
	c.controller(t, src, sel, time.Minute, logs.logger())
	for _, ns := range []string{in1, in2} {
		eventually(t, 10*time.Second, func() error { return c.holds(t, ns, src.get()) })
	}
	time.Sleep(time.Second)
	for _, ns := range []string{out, unlabelled} {
		if c.configMap(t, ns) != nil {
			t.Errorf("%s is not selected but has the ConfigMap", ns)
		}
	}

	// A namespace being deleted (none ever finishes here) that comes to
	// match the selector is skipped: nothing can be created in it.
	dying := c.namespace(t, nil)
	if err := c.admin.CoreV1().Namespaces().Delete(t.Context(), dying, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{out, dying} {
		n, err := c.admin.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Labels = map[string]string{"transitca-test": id, "mesh": "on"}
		if _, err := c.admin.CoreV1().Namespaces().Update(t.Context(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, func() error { return c.holds(t, out, src.get()) })
	time.Sleep(time.Second)
	if c.configMap(t, dying) != nil {
		t.Errorf("terminating namespace %s got the ConfigMap", dying)
	}
	if strings.Contains(logs.String(), "will retry") {
		t.Errorf("reconcile failed:\n%s", logs.String())
	}
}

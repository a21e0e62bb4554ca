// Package testserver keeps one test server (Vault, a Kubernetes API
// server) for all the tests of a package: started on first use, stopped
// when the tests end. internal/vaulttest and internal/kubetest build on it.
package testserver

import (
	"os"
	"sync"
	"testing"
)

// Shared is a server the tests of one package share.
type Shared[S interface{ Stop() }] struct {
	name  string
	start func() (S, error)

	once    sync.Once
	s       S
	err     error
	started bool
}

// New returns a Shared that starts its server with start on first use;
// name prefixes the failure a test reports when it cannot start.
func New[S interface{ Stop() }](name string, start func() (S, error)) *Shared[S] {
	return &Shared[S]{name: name, start: start}
}

// Get returns the server, starting it on first use. The test fails,
// naming what went wrong, when the server cannot be started.
func (sh *Shared[S]) Get(tb testing.TB) S {
	tb.Helper()
	sh.once.Do(func() {
		sh.s, sh.err = sh.start()
		sh.started = sh.err == nil
	})
	if sh.err != nil {
		tb.Fatalf("%s: %v", sh.name, sh.err)
	}
	return sh.s
}

// Main runs the package's tests, stops the server if they started it, and
// exits with the tests' code. Call it from TestMain.
func (sh *Shared[S]) Main(m *testing.M) {
	code := m.Run()
	if sh.started {
		sh.s.Stop()
	}
	os.Exit(code)
}

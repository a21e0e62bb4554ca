package ca_test

import (
	"testing"

	"github.com/transitca/transitca/internal/kubetest"
)

// TestMain gives the package's tests one real Kubernetes API server,
// started by the first test that asks for it (kubetest.New); the tests that
// do not need it never start it.
func TestMain(m *testing.M) { kubetest.Main(m) }

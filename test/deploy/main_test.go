package deploy

import (
	"testing"

	"github.com/transitca/transitca/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

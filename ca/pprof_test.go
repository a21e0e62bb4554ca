package ca

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Profiles are served to loopback callers only; /metrics and /healthz are
// served as before.
func TestWithPprof(t *testing.T) {
	h := WithPprof(MetricsHandler(prometheus.NewRegistry(), func() (bool, string) { return true, "" }))
	get := func(path, remote string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for _, remote := range []string{"127.0.0.1:40000", "[::1]:40000"} {
		if w := get("/debug/pprof/", remote); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "goroutine") {
			t.Errorf("from %s: %d %q; want the profile index", remote, w.Code, w.Body.String())
		}
	}
	for _, remote := range []string{"10.1.2.3:40000", "[2001:db8::1]:40000", "garbage"} {
		if w := get("/debug/pprof/goroutine", remote); w.Code != http.StatusForbidden {
			t.Errorf("from %s: %d; want 403", remote, w.Code)
		}
	}
	if w := get("/healthz", "10.1.2.3:40000"); w.Code != http.StatusOK {
		t.Errorf("/healthz: %d", w.Code)
	}
	if w := get("/metrics", "10.1.2.3:40000"); w.Code != http.StatusOK {
		t.Errorf("/metrics: %d", w.Code)
	}
}

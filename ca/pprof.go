package ca

import (
	"net"
	"net/http"
	"net/http/pprof"
)

// WithPprof adds Go's profiles (net/http/pprof) under /debug/pprof/ to h,
// answered only to callers on loopback: a profile shows the daemon's
// internals and costs CPU while it runs. Reach it with kubectl port-forward
// or from the pod itself.
func WithPprof(h http.Handler) http.Handler {
	profiles := http.NewServeMux()
	profiles.HandleFunc("/debug/pprof/", pprof.Index)
	profiles.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	profiles.HandleFunc("/debug/pprof/profile", pprof.Profile)
	profiles.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	profiles.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.Handle("/debug/pprof/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			http.Error(w, "profiles are served to loopback callers only", http.StatusForbidden)
			return
		}
		profiles.ServeHTTP(w, r)
	}))
	return mux
}

// Package prometheus pins the Prometheus server and promtool that
// transitca's tests run, built from the github.com/prometheus/prometheus
// module at the version this directory's go.mod requires (make prometheus,
// scripts/build-prometheus.sh). The tests start the server on loopback to
// scrape a test exporter and evaluate the shipped alert rules, and run
// "promtool test rules" on the rule unit tests; neither is ever part of the
// daemon, and the module stays out of the daemon's go.mod.
package prometheus

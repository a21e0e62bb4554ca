// Package observability checks the shipped monitoring: the Prometheus alert
// rules (deploy/observability/alerts.yaml) and the Grafana dashboard
// (deploy/observability/grafana-dashboard.json). The rules must load as
// Prometheus loads them, and every metric the rules and the dashboard
// query must be one a running daemon exports, so renaming a metric without
// updating them fails here.
//
// It is its own module so that the Prometheus server module, whose rule and
// PromQL parsers it uses, stays out of the daemon's go.mod.
package observability

// Package deploy tests the Helm chart in deploy/charts/transitca: it renders
// the chart with Helm's Go SDK for the default values and every example
// values file, checks the values schema refuses what it should, applies every
// rendered object to a real API server (internal/kubetest) with server-side
// apply, loads the rendered configuration with the daemon's own loader, and
// checks that the chart's RBAC rules equal those of deploy/rbac.
//
// It is its own Go module so that Helm's SDK stays out of the daemon's
// go.mod.
package deploy

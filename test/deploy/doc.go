// Package deploy tests the Helm chart in deploy/charts/transitca: it renders
// the chart with Helm's Go SDK for the default values and every example
// values file, checks the values schema refuses what it should, applies every
// rendered object to a real API server (internal/kubetest) with server-side
// apply, loads the rendered configuration with the daemon's own loader,
// checks that the chart's RBAC and admission policies equal those of
// deploy/rbac and its optional parts and that, applied to the API server,
// they refuse the chart's service account every write beyond its job. It
// also renders the chart as "helm template" does, with Helm's default
// capabilities.
//
// It is its own Go module so that Helm's SDK stays out of the daemon's
// go.mod.
package deploy

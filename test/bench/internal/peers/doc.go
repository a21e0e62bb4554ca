// Package peers starts and drives the systems the benchmark compares:
// transitca's daemon ("ca serve" in either intermediate mode), Istio's own
// CA server, Vault's PKI engine and Vault Transit (on one Vault dev
// server), and the in-process crypto bound. Servers run as child processes
// so that their CPU time and memory can be read apart from the load
// generator's.
package peers

// Package ca is transitca's gRPC layer: Istio's IstioCertificateService,
// caller authentication, request validation, and the one place where errors
// become gRPC status codes.
package ca

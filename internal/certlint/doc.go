// Package certlint checks, in tests, every certificate transitca issues
// against the RFCs with github.com/zmap/zlint/v3.
//
// transitca is a private SPIFFE CA for a service mesh, not a publicly
// trusted Web PKI CA, so Check enforces only the lints whose zlint source is
// an IETF RFC or zlint's own community lints:
//
//   - RFC5280 (the X.509 profile): errors, fatals and warnings all fail;
//   - RFC3279, RFC5480, RFC5891, RFC8813 (algorithms, ECC keys,
//     internationalized names, key usage of ECC keys) and Community: errors
//     and fatals fail, warnings are logged.
//
// Lints of the CA/Browser Forum (CABF_BR, CABF_EV, CABF_CS_BR,
// CABF_SMIME_BR), the root store policies (Mozilla, Apple, Chrome), ETSI
// and the CT and OCSP RFCs (RFC6962, RFC6960) are not run: they govern
// public Web PKI certificates (subject fields, 398-day leaves, CT logs,
// OCSP and CRL pointers) and do not apply to a mesh CA whose leaves carry a
// SPIFFE ID and live for days.
package certlint

// Package adminv1 is the generated Go code of transitca's administrative
// API (admin.proto): the issuance-log queries, proofs, checkpoints and
// backups served on the admin listener. Regenerate with "make generate";
// "make generate-check" fails when the committed code is stale.
package adminv1

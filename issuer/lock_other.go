//go:build !unix

package issuer

// lockFile is a no-op where flock is missing: FileState then guards its
// compare-and-set within one process only.
func lockFile(string) (func(), error) { return func() {}, nil }

//go:build linux || darwin

package store

import "syscall"

// freeSpace is the space in bytes an unprivileged process may still write
// on the file system of dir; false when it cannot be told.
func freeSpace(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true //nolint:gosec,unconvert // counts of a real file system fit; Bsize is int64 on Linux, uint32 on macOS
}

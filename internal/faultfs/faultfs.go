// Package faultfs makes real file-system faults for tests: a small tmpfs
// or loop-mounted ext4 file system that a test fills up, and files made
// immutable under a process that holds them open. It needs root (the
// tests run as root); a test that cannot mount fails, naming what failed:
// these faults are never skipped.
package faultfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Tmpfs mounts a tmpfs of size bytes on a fresh directory and unmounts it
// when the test ends.
func Tmpfs(tb testing.TB, size int64) string {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "tmpfs")
	mkdir(tb, dir)
	run(tb, "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir)
	tb.Cleanup(func() { unmount(tb, dir) })
	return dir
}

// Ext4 makes an ext4 file system of size bytes in an image file and
// loop-mounts it on a fresh directory; it is unmounted when the test ends.
// Unlike tmpfs, ext4 supports the immutable attribute (Immutable).
func Ext4(tb testing.TB, size int64) string {
	tb.Helper()
	base := tb.TempDir()
	img, dir := filepath.Join(base, "ext4.img"), filepath.Join(base, "ext4")
	loopFS(tb, "mkfs.ext4", img, size, dir, "loop")
	return dir
}

// loopFS makes a file system with mkfs in an image file img of size bytes
// and loop-mounts it, with the mount options opts, on dir, which it
// creates; it is unmounted when the test ends.
func loopFS(tb testing.TB, mkfs, img string, size int64, dir, opts string) {
	tb.Helper()
	mkdir(tb, dir)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		tb.Fatal(err)
	}
	run(tb, mkfs, "-q", "-F", img)
	run(tb, "mount", "-o", opts, img, dir)
	tb.Cleanup(func() { unmount(tb, dir) })
}

// Fill writes a file into dir until the file system is full, and returns
// a function that removes it, giving the space back.
func Fill(tb testing.TB, dir string) (free func()) {
	tb.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		_, err := f.Write(buf)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			tb.Fatalf("faultfs: filling %s: %v", dir, err)
		}
	}
	// Small writes find the last partial blocks.
	for _, err := f.Write(buf[:512]); err == nil; _, err = f.Write(buf[:512]) {
	}
	if err := f.Close(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		tb.Fatal(err)
	}
	return func() {
		tb.Helper()
		if err := os.Remove(path); err != nil {
			tb.Fatalf("faultfs: free %s: %v", dir, err)
		}
	}
}

// Immutable sets (on) or clears the immutable attribute of path (chattr
// +i): from then on every write to it fails with EPERM, also through file
// descriptors opened before. The file system must support it (Ext4).
func Immutable(tb testing.TB, path string, on bool) {
	tb.Helper()
	flag := "-i"
	if on {
		flag = "+i"
		tb.Cleanup(func() { _, _ = tool("chattr", "-i", path) })
	}
	run(tb, "chattr", flag, path)
}

func mkdir(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
}

func unmount(tb testing.TB, dir string) {
	if out, err := tool("umount", dir); err != nil {
		// Something still holds it (a daemon not yet stopped): detach it.
		if out2, err2 := tool("umount", "-l", dir); err2 != nil {
			tb.Errorf("faultfs: umount %s: %v: %s; %s", dir, err, out, out2)
		}
	}
}

// tool runs one of the system tools a fault needs (mount, umount, mkfs,
// chattr) and returns its combined output.
func tool(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput() //nolint:gosec // G204: the callers in this file name fixed system tools; the arguments are test paths
}

// run runs a command the fault needs and fails the test, saying why, if it
// cannot.
func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	out, err := tool(name, args...)
	if err != nil {
		tb.Fatalf("faultfs: %s %s: %v: %s (these tests need root, mount, loop devices and mkfs.ext4; they are never skipped)",
			name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// FailingDisk is an ext2 file system (no journal, errors=continue) on a
// loop device whose image lives, sparse, on a tmpfs smaller than the file
// system. Filling the tmpfs (Fill on Backing) makes the loop device's
// writes fail: writes to Dir still succeed into the page cache, but fsync
// returns EIO, as on a failing disk. Freeing the tmpfs heals it.
type FailingDisk struct {
	Dir     string // the ext2 file system
	Backing string // the tmpfs that holds its image
}

// NewFailingDisk makes a FailingDisk: an fsSize ext2 file system on a
// backingSize tmpfs. Both are unmounted when the test ends.
func NewFailingDisk(tb testing.TB, backingSize, fsSize int64) *FailingDisk {
	tb.Helper()
	back := Tmpfs(tb, backingSize)
	img, dir := filepath.Join(back, "ext2.img"), filepath.Join(tb.TempDir(), "ext2")
	loopFS(tb, "mkfs.ext2", img, fsSize, dir, "loop,errors=continue")
	return &FailingDisk{Dir: dir, Backing: back}
}

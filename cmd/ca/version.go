package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

// version and commit are set at build time by scripts/build-release.sh
// (-ldflags "-X main.version=… -X main.commit=…"), which the Dockerfile
// runs.
var (
	version = ""
	commit  = ""
)

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) error {
	if c := commitString(); c != "" {
		fmt.Fprintf(stdout, "transitca %s (commit %s)\n", versionString(), c)
		return nil
	}
	fmt.Fprintf(stdout, "transitca %s\n", versionString())
	return nil
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// commitString is the stamped commit, else the VCS revision Go recorded
// (a plain "go build" in a checkout), else "".
func commitString() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return ""
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// quickstartCommand is one command of a documented shell block: the text
// run (continuation lines joined), whether the page says it is refused,
// and the lines the page says it prints ("#   …" under it).
type quickstartCommand struct {
	line    string
	refused bool
	expect  []string
}

// quickstartCommands splits a shell block into its commands.
func quickstartCommands(lines []string) []quickstartCommand {
	var cmds []quickstartCommand
	for i := 0; i < len(lines); i++ {
		line := strings.TrimRight(lines[i], " ")
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
		case strings.HasPrefix(trimmed, "#   "):
			if len(cmds) > 0 {
				c := &cmds[len(cmds)-1]
				c.expect = append(c.expect, strings.TrimSpace(trimmed[1:]))
			}
		case strings.HasPrefix(trimmed, "#"):
		default:
			refused := false
			if j := strings.Index(trimmed, " # "); j >= 0 {
				refused = strings.Contains(trimmed[j:], "refused")
				trimmed = strings.TrimSpace(trimmed[:j])
			}
			cmds = append(cmds, quickstartCommand{line: trimmed, refused: refused})
		}
	}
	return cmds
}

// copyRepository copies the files git tracks (as they are in the work
// tree) into dir: what a clone holds.
func copyRepository(t *testing.T, dir string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("listing the repository's files with git: %v", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, name)
		info, err := os.Lstat(src)
		if err != nil || !info.Mode().IsRegular() {
			continue // deleted in the work tree, or a symbolic link
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// The quickstart's local part runs word for word in a copy of the
// repository: the first block (build, then the dev CA, left running) and
// the second, in one shell as a user types it. Every command succeeds but
// the one marked refused, which fails, and each prints what the page says.
func TestQuickstartLocalPart(t *testing.T) {
	for _, tool := range []string{"bash", "openssl", "git", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the quickstart needs %s on PATH (Debian: apt-get install %s): %v", tool, tool, err)
		}
	}
	for _, port := range []string{"15012", "15014", "15015", "8443"} {
		l, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatalf("the quickstart listens on 127.0.0.1:%s, which is taken: %v", port, err)
		}
		l.Close()
	}
	first := quickstartCommands(docBlock(t, "docs/quickstart.md", "in a first terminal"))
	second := quickstartCommands(docBlock(t, "docs/quickstart.md", "In a second terminal"))
	if len(first) != 2 || first[1].line != "bin/ca serve --dev" {
		t.Fatalf("the first block is %+v, want a build and then bin/ca serve --dev", first)
	}
	dir := t.TempDir()
	copyRepository(t, dir)

	build := exec.Command("bash", "-c", first[0].line)
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", first[0].line, err, out)
	}
	var serveOut bytes.Buffer
	serve := exec.Command("bash", "-c", "exec "+first[1].line)
	serve.Dir, serve.Stdout, serve.Stderr = dir, &serveOut, &serveOut
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = serve.Process.Signal(syscall.SIGTERM)
		return serve.Wait()
	}
	t.Cleanup(func() { _ = stop() })
	waitListening(t, "127.0.0.1:15015", &serveOut)

	// One shell runs the block; after each command it prints a marker with
	// the command's exit status.
	var script strings.Builder
	for i, c := range second {
		fmt.Fprintf(&script, "%s\necho \"@@@ %d $?\"\n", c.line, i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sh := exec.CommandContext(ctx, "bash", "-c", script.String())
	sh.Dir = dir
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("the second block's shell: %v\n%s", err, out)
	}
	segments, codes := splitByMarkers(t, string(out), len(second))
	for i, c := range second {
		switch {
		case c.refused && codes[i] == 0:
			t.Errorf("%s: succeeded, the quickstart says it is refused\n%s", c.line, segments[i])
		case !c.refused && codes[i] != 0:
			t.Errorf("%s: exited %d\n%s", c.line, codes[i], segments[i])
		}
		for _, want := range c.expect {
			if !strings.Contains(segments[i], want) {
				t.Errorf("%s: printed\n%s\nthe quickstart says it prints %q", c.line, segments[i], want)
			}
		}
	}
	if err := stop(); err != nil {
		t.Errorf("bin/ca serve --dev did not exit cleanly on SIGTERM: %v\n%s", err, serveOut.String())
	}
}

// waitListening waits up to a minute for addr to accept connections.
func waitListening(t *testing.T, addr string, log *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s after a minute:\n%s", addr, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// splitByMarkers cuts a shell's output at the "@@@ i status" lines.
func splitByMarkers(t *testing.T, out string, n int) (segments []string, codes []int) {
	t.Helper()
	var cur strings.Builder
	for _, line := range strings.SplitAfter(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "@@@" {
			i, _ := strconv.Atoi(f[1])
			code, _ := strconv.Atoi(f[2])
			if i != len(segments) {
				t.Fatalf("command %d ended out of order:\n%s", i, out)
			}
			segments, codes = append(segments, cur.String()), append(codes, code)
			cur.Reset()
			continue
		}
		cur.WriteString(line)
	}
	if len(segments) != n {
		t.Fatalf("%d of %d commands ran:\n%s", len(segments), n, out)
	}
	return segments, codes
}

// repoPath matches a path into the repository named in prose or code.
var repoPath = regexp.MustCompile("(?:^|[\\s`(\"/])((?:deploy|docs|scripts)/[A-Za-z0-9_.\\-/*]*[A-Za-z0-9_\\-/*])")

// Every path into deploy/, docs/ or scripts/ that the README or a guide
// names exists.
func TestDocsNameExistingPaths(t *testing.T) {
	root := filepath.Join("..", "..")
	docs := []string{"README.md"}
	for _, dir := range []string{"docs", "deploy"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(p, ".md") {
				rel, _ := filepath.Rel(root, p)
				docs = append(docs, rel)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	checked := 0
	for _, doc := range docs {
		b, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range repoPath.FindAllStringSubmatch(string(b), -1) {
			p := strings.TrimSuffix(m[1], ".")
			if strings.Count(p, "/") == 1 && !strings.Contains(p, ".") && strings.HasPrefix(p, "deploy/") {
				continue // kubectl's deploy/NAME
			}
			if matches, _ := filepath.Glob(filepath.Join(root, p)); len(matches) == 0 {
				t.Errorf("%s names %s, which does not exist", doc, p)
			}
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d paths; the pattern no longer finds them", checked)
	}
}

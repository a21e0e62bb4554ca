package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readmeBlock returns the lines of the first ```sh block after the line
// of README.md that contains marker.
func readmeBlock(t *testing.T, marker string) []string {
	t.Helper()
	return docBlock(t, "README.md", marker)
}

// docBlock returns the lines of the first ```sh block after the line of
// the repository's Markdown file doc that contains marker.
func docBlock(t *testing.T, doc, marker string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", doc))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("%s has no %q", doc, marker)
	}
	text = text[i:]
	start := strings.Index(text, "```sh\n")
	end := strings.Index(text[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatalf("%s has no sh block after %q", doc, marker)
	}
	return strings.Split(strings.TrimSpace(text[start+6:start+6+end]), "\n")
}

// shellWords splits a command line the way sh does for the simple lines
// of the README: words, double quotes, $VAR expansion, "> file".
func shellWords(line string, vars map[string]string) (words []string, out string) {
	var cur strings.Builder
	inWord, quoted := false, false
	flush := func() {
		if inWord {
			words = append(words, cur.String())
		}
		cur.Reset()
		inWord = false
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '"':
			quoted, inWord = !quoted, true
		case c == '$' && !quoted:
			j := i + 1
			for j < len(line) && (line[j] == '_' || line[j] >= 'A' && line[j] <= 'Z') {
				j++
			}
			// Unquoted expansion splits into words.
			flush()
			words = append(words, strings.Fields(vars[line[i+1:j]])...)
			i = j - 1
		case (c == ' ' || c == '\t') && !quoted:
			flush()
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	flush()
	for k, w := range words {
		if w == ">" && k+1 < len(words) {
			return words[:k], words[k+1]
		}
	}
	return words, ""
}

// The README's dev-mode rotation walkthrough runs word for word against a
// dev daemon: every command succeeds, except those marked "refused",
// which fail.
func TestREADMERotationWalkthrough(t *testing.T) {
	for _, port := range []string{"15012", "15014", "15015"} {
		l, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatalf("the README's dev daemon listens on 127.0.0.1:%s, which is taken: %v", port, err)
		}
		l.Close()
	}
	lines := append(readmeBlock(t, "In `--dev` mode the admin identity"), readmeBlock(t, "The whole rotation on a laptop")...)
	t.Chdir(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan int, 1)
	var serveErr bytes.Buffer
	go func() {
		served <- run(ctx, []string{"serve", "--dev", "--log-level", "error"}, &bytes.Buffer{}, &serveErr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-served; code != 0 {
			t.Errorf("ca serve --dev exited %d: %s", code, serveErr.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", "127.0.0.1:15015"); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev daemon not listening after 30s: %s", serveErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	vars := map[string]string{}
	ran := 0
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		refused := false
		if i := strings.Index(line, " #"); i >= 0 {
			refused = strings.Contains(line[i:], "refused")
			line = strings.TrimSpace(line[:i])
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.Contains(k, " ") {
			vars[k] = strings.Trim(v, `"`)
			continue
		}
		words, outFile := shellWords(line, vars)
		if len(words) == 0 || words[0] != "bin/ca" {
			t.Fatalf("README line %q is not a ca command", line)
		}
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), words[1:], &stdout, &stderr)
		ran++
		switch {
		case refused && code == 0:
			t.Errorf("%s: succeeded, the README says it is refused\n%s", line, stdout.String())
		case !refused && code != 0:
			t.Errorf("%s: exited %d\n%s%s", line, code, stdout.String(), stderr.String())
		}
		if outFile != "" {
			if err := os.WriteFile(outFile, stdout.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if strings.Contains(line, "revoke-intermediate") && !strings.Contains(stdout.String(), `"spiffe_id":"spiffe://cluster.local/ns/transitca/sa/admin"`) {
			t.Errorf("%s: the affected workloads do not list the admin certificate it signed:\n%s", line, stdout.String())
		}
	}
	if ran < 10 {
		t.Fatalf("ran %d README commands, want the whole walkthrough", ran)
	}
}

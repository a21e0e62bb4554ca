package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildRelease builds ca as the Dockerfile does, with
// scripts/build-release.sh, and returns the binary's path.
func buildRelease(t *testing.T, version, commit string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ca")
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "build-release.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", script, bin)
	cmd.Env = append(os.Environ(), "VERSION="+version, "COMMIT="+commit)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-release.sh: %v\n%s", err, out)
	}
	return bin
}

// The image's binary: built by the script the Dockerfile runs, static (it
// runs on distroless/static, which has no libc), stamped with the version
// and commit, and it accepts every shipped example configuration.
func TestReleaseBuild(t *testing.T) {
	docker, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./scripts/build-release.sh /out/ca", "USER 65532:65532", "VOLUME [\"/var/lib/transitca\"]"} {
		if !strings.Contains(string(docker), want) {
			t.Fatalf("Dockerfile does not contain %q", want)
		}
	}

	bin := buildRelease(t, "v9.8.7-rc.1", "0123456789ab")

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the release binary is dynamically linked (it has an ELF interpreter); distroless/static has no libc")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the release binary needs shared libraries %v", libs)
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("ca version: %v\n%s", err, out)
	}
	if got, want := string(out), "transitca v9.8.7-rc.1 (commit 0123456789ab)\n"; got != want {
		t.Fatalf("ca version printed %q, want %q", got, want)
	}

	configs, err := filepath.Glob(filepath.Join("..", "..", "deploy", "config", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(configs) < 3 {
		t.Fatalf("deploy/config holds %d example configurations, want at least 3", len(configs))
	}
	for _, c := range configs {
		t.Run(filepath.Base(c), func(t *testing.T) {
			// Outside a pod and with no Vault: checking must need neither.
			cmd := exec.Command(bin, "serve", "--check-config", "--config", c)
			cmd.Env = append(os.Environ(), "VAULT_ADDR=", "VAULT_TOKEN=", "KUBECONFIG=")
			out, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "configuration OK" {
				t.Fatalf("ca serve --check-config --config %s: %v\n%s", c, err, out)
			}
		})
	}
}

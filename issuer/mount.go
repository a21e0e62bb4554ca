package issuer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Engine is a kind of Vault secrets engine the CA keeps things in.
type Engine string

// The engines the CA needs.
const (
	// EngineTransit holds the keys.
	EngineTransit Engine = "transit"
	// EngineKV2 holds the certificates: KV version 2, for check-and-set.
	EngineKV2 Engine = "kv version 2"
)

// enableCommand is the Vault CLI command that mounts e at path.
func (e Engine) enableCommand(path string) string {
	if e == EngineKV2 {
		return "vault secrets enable -path=" + path + " -version=2 kv"
	}
	return "vault secrets enable -path=" + path + " transit"
}

func (e Engine) input() *vault.MountInput {
	if e == EngineKV2 {
		return &vault.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}
	}
	return &vault.MountInput{Type: "transit"}
}

// MountError says that the secrets engine the CA needs at a path is
// missing or of another kind, and what fixes it.
type MountError struct {
	Engine Engine
	Path   string
	Addr   string // the Vault address
	// Found describes what is mounted at Path; empty when nothing is.
	Found string
	// Fix is the command an operator runs to fix it.
	Fix string
}

func (e *MountError) Error() string {
	if e.Found == "" {
		return fmt.Sprintf("no %s secrets engine is mounted at %q in vault %s: enable it with %q",
			e.Engine, e.Path, e.Addr, e.Fix)
	}
	return fmt.Sprintf("the secrets engine mounted at %q in vault %s is %s, not %s: %s",
		e.Path, e.Addr, e.Found, e.Engine, e.Fix)
}

// Is reports ErrMountNotFound when nothing is mounted at the path.
func (e *MountError) Is(target error) bool { return target == ErrMountNotFound && e.Found == "" }

// EnsureMount checks that the Transit engine is mounted; when it is not and
// enable is true it mounts it. See ensureMount.
func (t *Transit) EnsureMount(ctx context.Context, enable bool) (created bool, err error) {
	ctx, cancel := t.ctx(ctx)
	defer cancel()
	return ensureMount(ctx, t.client, t.mount, EngineTransit, enable)
}

// MountPath is where the Transit engine is mounted.
func (t *Transit) MountPath() string { return t.mount }

// EnsureMount checks that a KV version 2 engine is mounted; when nothing is
// mounted and enable is true it mounts one and waits until it takes
// writes. See ensureMount.
func (c *VaultCerts) EnsureMount(ctx context.Context, enable bool) (created bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.kv.timeout+10*time.Second)
	defer cancel()
	created, err = ensureMount(ctx, c.kv.client, c.kv.mount, EngineKV2, enable)
	if err != nil || !created {
		return created, err
	}
	// KV v2 upgrades its storage in the background after mounting and
	// refuses requests until it is done.
	for {
		_, err := c.kv.client.KVv2(c.kv.mount).Get(ctx, c.path("probe"))
		if err == nil || errors.Is(err, vault.ErrSecretNotFound) {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return true, vaultErr("wait for new kv engine", c.kv.mount, 0, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// MountPath is where the KV engine is mounted.
func (c *VaultCerts) MountPath() string { return c.kv.mount }

// ensureMount reads the mount at path (sys/mounts/<path>). Nothing mounted:
// with enable it mounts kind there and reports created, else it returns a
// *MountError (errors.Is ErrMountNotFound) naming the command that fixes
// it. Another kind of engine mounted: a *MountError. A token not allowed to
// read the mount table: no error, since the engine may well be there.
func ensureMount(ctx context.Context, client *vault.Client, path string, kind Engine, enable bool) (bool, error) {
	path = strings.Trim(path, "/")
	m, err := client.Sys().GetMountWithContext(ctx, path)
	var re *vault.ResponseError
	switch {
	case err == nil:
		return false, checkMountKind(client.Address(), path, kind, m)
	case errors.As(err, &re) && re.StatusCode == http.StatusForbidden:
		return false, nil
	case !mountMissing(err):
		return false, vaultErr("read mount", "sys/mounts/"+path, 0, err)
	case !enable:
		return false, &MountError{Engine: kind, Path: path, Addr: client.Address(), Fix: kind.enableCommand(path)}
	}
	if err := client.Sys().MountWithContext(ctx, path, kind.input()); err != nil {
		return false, vaultErr("enable "+string(kind)+" engine", "sys/mounts/"+path, 0, err)
	}
	return true, nil
}

func checkMountKind(addr, path string, kind Engine, m *vault.MountOutput) error {
	version := m.Options["version"]
	switch {
	case kind == EngineTransit && m.Type == "transit":
		return nil
	case kind == EngineKV2 && m.Type == "kv" && version == "2":
		return nil
	case kind == EngineKV2 && m.Type == "kv":
		if version == "" {
			version = "1"
		}
		return &MountError{Engine: kind, Path: path, Addr: addr, Found: "kv version " + version,
			Fix: "upgrade it with \"vault kv enable-versioning " + path + "\" or set vault.kv_mount to a kv version 2 engine"}
	default:
		setting := "vault.transit_mount"
		if kind == EngineKV2 {
			setting = "vault.kv_mount"
		}
		return &MountError{Engine: kind, Path: path, Addr: addr, Found: "a " + m.Type + " engine",
			Fix: "set " + setting + " to a " + string(kind) + " engine's path, or mount one with \"" + kind.enableCommand("<path>") + "\""}
	}
}

// mountMissing reports whether Vault answered that nothing is mounted at the
// path asked for: sys/mounts/<path> answers 400 "No secret engine mount
// at", any path under a missing mount 404 "no handler for route".
func mountMissing(err error) bool {
	var re *vault.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	msg := strings.ToLower(strings.Join(re.Errors, " "))
	return (re.StatusCode == http.StatusBadRequest && strings.Contains(msg, "no secret engine mount")) ||
		(re.StatusCode == http.StatusNotFound && strings.Contains(msg, "no handler for route"))
}

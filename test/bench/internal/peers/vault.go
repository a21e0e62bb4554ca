package peers

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/transitca/transitca/internal/vaulttest"
)

// Vault is a Vault dev server started for the run, with the mounts the
// scenarios use.
type Vault struct {
	Server *vaulttest.Server
	Client *vault.Client
	PID    int
}

// StartVault starts the pinned Vault dev server (make vault builds it) the
// way the e2e tests do.
func StartVault() (*Vault, error) {
	s, err := vaulttest.Start()
	if err != nil {
		return nil, err
	}
	pid, err := ChildPID("vault")
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("find the vault process: %w", err)
	}
	c, err := s.Client()
	if err != nil {
		s.Stop()
		return nil, err
	}
	return &Vault{Server: s, Client: c, PID: pid}, nil
}

// Stop stops the server.
func (v *Vault) Stop() { v.Server.Stop() }

// Mount enables a secrets engine at path.
func (v *Vault) Mount(ctx context.Context, path, typ string, opts map[string]string) error {
	in := &vault.MountInput{Type: typ, Options: opts, Config: vault.MountConfigInput{MaxLeaseTTL: "87600h"}}
	if err := v.Client.Sys().MountWithContext(ctx, path, in); err != nil {
		return fmt.Errorf("enable %s at %s: %w", typ, path, err)
	}
	return nil
}

// MountKV enables KV v2 at path and waits until it accepts reads (it
// upgrades its storage in the background after mounting).
func (v *Vault) MountKV(ctx context.Context, path string) error {
	if err := v.Mount(ctx, path, "kv", map[string]string{"version": "2"}); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := v.Client.KVv2(path).Get(ctx, "probe")
		if err == nil || errors.Is(err, vault.ErrSecretNotFound) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kv-v2 at %s not ready: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PKI role names SetupPKI creates.
const (
	PKIRole        = "istio"
	PKIRoleNoStore = "istio-nostore"
)

// SetupPKI enables a PKI engine at mount with an ECDSA P-256 issuer and two
// roles that sign what an Istio workload asks for (its SPIFFE URI SAN, no
// common name, any key type, 24h): PKIRole stores every certificate,
// PKIRoleNoStore does not.
func (v *Vault) SetupPKI(ctx context.Context, mount string) error {
	if err := v.Mount(ctx, mount, "pki", nil); err != nil {
		return err
	}
	l := v.Client.Logical()
	if _, err := l.WriteWithContext(ctx, mount+"/root/generate/internal", map[string]any{
		"common_name": "vault pki bench root", "key_type": "ec", "key_bits": 256, "ttl": "87600h",
	}); err != nil {
		return fmt.Errorf("pki root: %w", err)
	}
	for role, noStore := range map[string]bool{PKIRole: false, PKIRoleNoStore: true} {
		if _, err := l.WriteWithContext(ctx, mount+"/roles/"+role, map[string]any{
			"allowed_uri_sans": "spiffe://cluster.local/*",
			"require_cn":       false,
			"use_csr_sans":     true,
			"key_type":         "any",
			"server_flag":      true,
			"client_flag":      true,
			"ttl":              "24h",
			"max_ttl":          "720h",
			"no_store":         noStore,
		}); err != nil {
			return fmt.Errorf("pki role %s: %w", role, err)
		}
	}
	return nil
}

// SetupTransitKey enables Transit at mount with an ecdsa-p256 key.
func (v *Vault) SetupTransitKey(ctx context.Context, mount, key string) error {
	if err := v.Mount(ctx, mount, "transit", nil); err != nil {
		return err
	}
	if _, err := v.Client.Logical().WriteWithContext(ctx, mount+"/keys/"+key, map[string]any{"type": "ecdsa-p256"}); err != nil {
		return fmt.Errorf("transit key %s/%s: %w", mount, key, err)
	}
	return nil
}

// VaultHTTP is a lean HTTP client for Vault's API, with one keep-alive
// connection per concurrent caller, so that the load generator spends as
// little as it can on the client side.
type VaultHTTP struct {
	addr, token string
	hc          *http.Client
}

// NewVaultHTTP returns a client that keeps up to conns connections open.
func NewVaultHTTP(addr, token string, conns int) *VaultHTTP {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
	}
	return &VaultHTTP{addr: strings.TrimRight(addr, "/"), token: token, hc: &http.Client{Transport: tr}}
}

// CloseIdle closes the client's idle connections.
func (v *VaultHTTP) CloseIdle() { v.hc.CloseIdleConnections() }

// HTTPError is a non-2xx answer from Vault.
type HTTPError struct {
	Status int
	Body   string
}

func (e *HTTPError) Error() string { return fmt.Sprintf("vault answered %d: %s", e.Status, e.Body) }

// Code is the error category for the load generator's counts.
func (e *HTTPError) Code() string { return fmt.Sprintf("HTTP %d", e.Status) }

func (v *VaultHTTP) post(ctx context.Context, path string, body any, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.addr+"/v1/"+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", v.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := v.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &HTTPError{Status: resp.StatusCode, Body: strings.TrimSpace(string(msg))}
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode vault answer: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// PKISign asks pki/sign/:role to sign csrPEM for 24h and returns the
// certificate PEM.
func (v *VaultHTTP) PKISign(ctx context.Context, mount, role string, csrPEM []byte) (string, error) {
	var out struct {
		Data struct {
			Certificate string `json:"certificate"`
		} `json:"data"`
	}
	if err := v.post(ctx, mount+"/sign/"+role, map[string]any{"csr": string(csrPEM), "ttl": "24h"}, &out); err != nil {
		return "", err
	}
	if out.Data.Certificate == "" {
		return "", errors.New("vault pki answered without a certificate")
	}
	return out.Data.Certificate, nil
}

// TransitSign signs a SHA-256 digest with an ECDSA key version, with the
// request transitca's in-Vault mode sends for every leaf (prehashed, ASN.1,
// the key version pinned), and returns the signature text.
func (v *VaultHTTP) TransitSign(ctx context.Context, mount, key string, version int, digest []byte) (string, error) {
	var out struct {
		Data struct {
			Signature string `json:"signature"`
		} `json:"data"`
	}
	body := map[string]any{
		"input":                base64.StdEncoding.EncodeToString(digest),
		"key_version":          version,
		"prehashed":            true,
		"marshaling_algorithm": "asn1",
	}
	if err := v.post(ctx, mount+"/sign/"+key+"/sha2-256", body, &out); err != nil {
		return "", err
	}
	if !strings.HasPrefix(out.Data.Signature, "vault:v") {
		return "", fmt.Errorf("transit answered signature %q", out.Data.Signature)
	}
	return out.Data.Signature, nil
}

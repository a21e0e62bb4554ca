package issuer_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transitca/transitca/issuer"
)

// TestLocalKeyFiles checks, for every key type, that a dev key is
// generated with that type, kept as a PKCS #8 PEM file labelled DEV-ONLY
// (the format existing dev data directories hold), and read back as the
// same key by a fresh key store.
func TestLocalKeyFiles(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []issuer.KeyType{
		issuer.KeyECDSAP256, issuer.KeyECDSAP384, issuer.KeyRSA2048, issuer.KeyRSA3072, issuer.KeyRSA4096, issuer.KeyEd25519,
	} {
		t.Run(string(typ), func(t *testing.T) {
			dir := t.TempDir()
			if _, err := issuer.NewLocalKeys(dir).EnsureKey(ctx, "k", typ); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(dir, "k.v1.dev-only-key.pem"))
			if err != nil {
				t.Fatal(err)
			}
			block, rest := pem.Decode(data)
			if block == nil || block.Type != "PRIVATE KEY" || len(rest) != 0 {
				t.Fatalf("key file is not one PEM PRIVATE KEY block:\n%s", data)
			}
			if !strings.Contains(block.Headers["Comment"], issuer.DevOnlyLabel) {
				t.Fatalf("key file is not labelled %s: headers %v", issuer.DevOnlyLabel, block.Headers)
			}
			if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
				t.Fatalf("key file is not PKCS #8: %v", err)
			}
			// A fresh store reads the file, and finds the type asked for.
			again := issuer.NewLocalKeys(dir)
			if created, err := again.EnsureKey(ctx, "k", typ); err != nil || created {
				t.Fatalf("EnsureKey on the stored key = %v, %v; want it found with type %s", created, err, typ)
			}
		})
	}
}

# transitca-init: the Vault policy of "ca init", run once by an operator
# (and again, harmlessly: init is idempotent). It creates the
# non-exportable Transit keys and stores the self-signed root certificate.
# The daemon never holds it; give the daemon transitca.hcl.
#
#   vault token create -policy=transitca-init -ttl=15m
#
# Same path assumptions as transitca.hcl.

# ca init checks that the engines it writes to are mounted, and of the
# right kind (it works without this, with a vaguer error when one is
# missing).
path "sys/mounts/transit" {
  capabilities = ["read"]
}
path "sys/mounts/secret" {
  capabilities = ["read"]
}

# Create the keys and read them back. A key is created with its type,
# exportable=false and allow_plaintext_backup=false, and nothing else:
# Vault refuses any other parameter or value (exportable=true,
# allow_plaintext_backup=true, a type the CA does not sign with, automatic
# rotation, ...), so this token cannot create, or write again, a key
# whose private part could ever leave Vault. The root and the
# intermediate take the types of ca.root_key_type and
# ca.intermediate_key_type; the log's checkpoint key is ed25519.
path "transit/keys/transitca-root" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "type"                   = ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}
path "transit/keys/transitca-intermediate" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "type"                   = ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}
path "transit/keys/transitca-log" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "type"                   = ["ed25519"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}

# Self-sign the root certificate.
path "transit/sign/transitca-root/*" {
  capabilities = ["update"]
}

# Store the root certificate.
path "secret/data/transitca/*" {
  capabilities = ["create", "read", "update"]
}

# The same refusals as the daemon's policy: init creates keys, it never
# weakens them (config could set exportable or allow_plaintext_backup
# afterwards).
path "transit/keys/+/config" {
  capabilities = ["deny"]
}
path "transit/keys/+/trim" {
  capabilities = ["deny"]
}
path "transit/keys/+/import" {
  capabilities = ["deny"]
}
path "transit/keys/+/import_version" {
  capabilities = ["deny"]
}
path "transit/export/*" {
  capabilities = ["deny"]
}
path "transit/byok-export/*" {
  capabilities = ["deny"]
}
path "transit/backup/*" {
  capabilities = ["deny"]
}
path "transit/restore" {
  capabilities = ["deny"]
}
path "transit/restore/*" {
  capabilities = ["deny"]
}

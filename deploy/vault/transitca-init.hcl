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

# Create the keys (exportable=false, allow_plaintext_backup=false) and
# read them back.
path "transit/keys/transitca-root" {
  capabilities = ["create", "update", "read"]
}
path "transit/keys/transitca-intermediate" {
  capabilities = ["create", "update", "read"]
}
path "transit/keys/transitca-log" {
  capabilities = ["create", "update", "read"]
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
# weakens them.
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

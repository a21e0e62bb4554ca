# transitca: the Vault policy of the daemon ("ca serve"). It serves
# certificates, rotates the intermediate and the root, runs drills and
# publishes the issuance log's checkpoints, and nothing more.
#
# Paths assume the configuration defaults: Transit at "transit", KV
# version 2 at "secret", kv_prefix "transitca", keys transitca-root,
# transitca-intermediate (intermediate_mode: vault) and transitca-log.
# Change them here if your configuration changes them.
#
# It grants no "create" on transit/keys: the keys are made by "ca init",
# with the more privileged transitca-init policy.

# Sign with the root (the intermediates), the intermediate in
# intermediate_mode vault (the leaves), and the checkpoint key (ed25519
# signs at sign/<key>, the others at sign/<key>/<hash>).
path "transit/sign/transitca-root/*" {
  capabilities = ["update"]
}
path "transit/sign/transitca-intermediate/*" {
  capabilities = ["update"]
}
path "transit/sign/transitca-log" {
  capabilities = ["update"]
}

# Read the public keys and versions.
path "transit/keys/transitca-root" {
  capabilities = ["read"]
}
path "transit/keys/transitca-intermediate" {
  capabilities = ["read"]
}
path "transit/keys/transitca-log" {
  capabilities = ["read"]
}

# Root rotation (ca admin root prepare) and intermediate rotation in
# intermediate_mode vault add a key version.
path "transit/keys/transitca-root/rotate" {
  capabilities = ["update"]
}
path "transit/keys/transitca-intermediate/rotate" {
  capabilities = ["update"]
}

# Root and intermediate certificates (<prefix>/<key>-v<N>), the rotation
# state (<prefix>/rotation) and the log witness
# (<prefix>/log-checkpoint/<origin>). Writes use check-and-set; nothing is
# ever deleted, so no delete, destroy or metadata access.
path "secret/data/transitca/*" {
  capabilities = ["create", "read", "update"]
}

# Never: making a key exportable (config can set exportable=true, and
# that cannot be undone) or deletable (deletion_allowed), trimming old
# versions, exporting or backing up key material, restoring or importing
# keys over ours. Key deletion itself needs "delete" on transit/keys/<key>,
# which no rule here grants, and deletion_allowed, which config would set.
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

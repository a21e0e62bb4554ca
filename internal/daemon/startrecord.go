package daemon

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"slices"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// startRecord is what the start entry records: the policy in force, where
// the keys are and what Vault answered about them, and what the witness
// held when the log was opened.
func (d *Daemon) startRecord(ctx context.Context) *ca.StartRecord {
	cfg, a := d.cfg, d.authority
	host, _ := os.Hostname()
	r := &ca.StartRecord{
		Version: d.opts.Version, Host: host, Dev: cfg.Dev, TrustDomain: cfg.TrustDomain,
		IntermediateMode: string(a.Mode()), Root: issuer.Fingerprint(a.Root()), RootKeyVersion: a.RootKeyVersion(),
		Tiers: map[string]ca.TierRecord{}, DefaultTier: cfg.DefaultTier,
		AdminIdentities: slices.Clone(cfg.Admin.Identities),
		Custody:         d.keyCustody(ctx),
		Log:             d.logAtOpen,
	}
	for name, ttl := range tierMaxTTLs(cfg) {
		r.Tiers[name] = ca.TierRecord{MaxTTL: ttl.String()}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Tiers)) {
		t := cfg.Tiers[name]
		r.Tiers[name] = ca.TierRecord{MaxTTL: t.MaxTTL.Std().String(), DefaultTTL: t.DefaultTTL.Std().String()}
	}
	r.Rules = []ca.RuleRecord{}
	for _, p := range cfg.Policy {
		r.Rules = append(r.Rules, ca.RuleRecord{
			Tier: p.Tier, Namespaces: p.Namespaces, ServiceAccounts: p.ServiceAccounts,
			SPIFFEIDs: p.SPIFFEIDs, Clusters: p.Clusters, DNSNames: p.DNSNames,
		})
	}
	if r.AdminIdentities == nil {
		r.AdminIdentities = []string{}
	}
	return r
}

// logAtStart is the log as it was opened: its size (the entries written
// before this start) and what its witness held.
func logAtStart(l *store.Log) ca.LogAtStart {
	s := ca.LogAtStart{Size: l.Size(), Witness: ca.WitnessNone}
	signed, has := l.WitnessAtOpen()
	switch {
	case !has:
	case signed == nil:
		s.Witness = ca.WitnessEmpty
	default:
		s.Witness = ca.WitnessChecked
		if cp, err := store.ParseCheckpoint(string(signed)); err == nil {
			s.WitnessSize = cp.Size
		}
	}
	return s
}

// keyCustody is where each of the CA's keys is kept and, for a Vault
// Transit key, Vault's own answer about it now. A key Vault does not
// answer for is recorded with the error.
func (d *Daemon) keyCustody(ctx context.Context) []ca.KeyCustody {
	cfg := d.cfg
	keys := []ca.KeyCustody{{Role: "root", Name: cfg.CA.RootKey}}
	if d.authority != nil && d.authority.Mode() == issuer.ModeVault {
		keys = append(keys, ca.KeyCustody{Role: "intermediate", Name: cfg.CA.IntermediateKey})
	} else {
		keys = append(keys, ca.KeyCustody{Role: "intermediate", Where: ca.KeyInMemory})
	}
	keys = append(keys, ca.KeyCustody{Role: "checkpoint", Name: cfg.Log.CheckpointKey})
	for i := range keys {
		k := &keys[i]
		if k.Where == ca.KeyInMemory {
			continue
		}
		tr := d.backend.Transit
		if tr == nil {
			k.Where = ca.KeyInLocalFile
			continue
		}
		k.Where, k.Mount = ca.KeyInVault, tr.Mount()
		info, err := tr.ReadKey(ctx, k.Name)
		if err != nil {
			k.Error = err.Error()
			d.log.WarnContext(ctx, "key custody: Vault did not answer for a key", slog.String("key", k.Name), slog.Any("error", err))
			continue
		}
		k.Type, k.Exportable, k.AllowPlaintextBackup, k.DeletionAllowed = string(info.Type), info.Exportable, info.AllowPlaintextBackup, info.DeletionAllowed
		k.LatestVersion, k.MinAvailableVersion, k.MinDecryptionVersion = info.LatestVersion, info.MinAvailableVersion, info.MinDecryptionVersion
	}
	return keys
}

// recordStop appends the stop entry, bounded in time: a stop that cannot
// be recorded is logged, and the next start, with no stop before it,
// shows an unclean stop.
func (d *Daemon) recordStop() {
	ctx, cancel := context.WithTimeout(context.Background(), logCloseTimeout(d.cfg))
	defer cancel()
	if err := d.recorder.RecordAdmin(ctx, ca.StopAction, "transitca", "reason=shutdown"); err != nil {
		d.log.ErrorContext(ctx, "record stop", slog.Any("error", err))
	}
}

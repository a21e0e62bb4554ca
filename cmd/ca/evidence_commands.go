package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Checks names what a recomputing command's output equals in the report
// (the JSON form), so that the commands can be run and compared.
const (
	checkByTier      = "issued.by_tier"
	checkByNamespace = "issued.by_namespace"
	checkByCluster   = "issued.by_cluster"
	checkByBucket    = "issued.by_bucket (non-empty buckets: start → total)"
	checkLongest     = "validity (tier → longest_seconds)"
	checkOver        = "validity (every over[].serial)"
	checkOverControl = "validity (every over_control[].serial)"
	checkPrivileged  = "privileged.flagged (serial of each over the privileged limit)"
	checkDenials     = "denials.by_reason"
	checkEvents      = "events ([time, action], sorted)"
	checkDrills      = "drills (total, passed, not_checked)"
	checkService     = "service.events ([time, action], sorted)"
	checkLive        = "live_at_to (namespace → service account → certificates)"
)

// jqPrelude defines the period for the recomputing jq programs: t reads an
// export's RFC 3339 time as whole seconds, which selects exactly what the
// report selected because the period's bounds are whole seconds. $from
// and $to are passed with --argjson.
const jqPrelude = `def t: sub("\\.[0-9]+Z$"; "Z") | fromdate; def inperiod: (.time | t) as $s | $s >= $from and $s < $to; def validity: (.not_after | t) - (.not_before | t); `

// jqIssued selects the issuances of the period.
const jqIssued = `[.[] | select(.kind=="issuance" and inperiod)]`

// jqDrillOutcome reads a drill entry's detail as drillOutcome does.
const jqDrillOutcome = `def outcome: if (.detail | startswith("passed=true") | not) then "failed" elif (.detail | contains(" not_checked=") or contains("no Vault to check")) then "not_checked" else "passed" end; `

// jqKnownPrivileged is knownPrivileged for an export entry; $admins is
// passed with --argjson.
const jqKnownPrivileged = `def known: (.service_account // "") as $sa | .spiffe_id as $id | $sa == "istiod" or ($sa | startswith("istiod-")) or ($sa | contains("gateway")) or $sa == "ztunnel" or any($admins[]; . == $id); `

// jqArgs are the values a jq program reads: every value from the log goes
// in with --arg or --argjson, never into the program's text, so that no
// tier name or identity can reach the auditor's shell.
type jqArgs []string

func (a jqArgs) json(name string, v any) jqArgs {
	b, _ := json.Marshal(v)
	return append(a, "--argjson", name, shellQuote(string(b)))
}

// evidenceCommands are the exact commands that recompute the report from a
// backup of each log, with nothing but the ca binary, sha256sum and jq.
func evidenceCommands(r *evidenceReport, lf *logFlags, shards []shard) []evidenceCommand {
	start, _ := time.Parse(time.RFC3339, r.From)
	end, _ := time.Parse(time.RFC3339, r.To)
	period := jqArgs{}.json("from", start.Unix()).json("to", end.Unix())
	jq := func(what, check string, args jqArgs, program string) evidenceCommand {
		cmd := "jq -cS -s " + strings.Join(append(slices.Clone(period), args...), " ") + " " + shellQuote(jqPrelude+program) + " issuance.jsonl"
		return evidenceCommand{What: what, Check: check, Command: cmd}
	}
	count := func(field string) string {
		return jqIssued + ` | group_by(` + field + `) | map({key: (.[0] | ` + field + `), value: length}) | from_entries`
	}
	bucketLen := 10
	if r.Issued.Bucket == "month" {
		bucketLen = 7
	}

	var cmds []evidenceCommand
	var dbs []string
	for i, s := range shards {
		db, vkey, cp, of := "issuance.db", "log-verifier.vkey", "report.checkpoint", ""
		if len(shards) > 1 {
			db, vkey, cp, of = fmt.Sprintf("issuance-%d.db", i), fmt.Sprintf("log-verifier-%d.vkey", i), fmt.Sprintf("report-%d.checkpoint", i), " of "+s.name
		}
		lg := r.Logs[i]
		if len(lf.dbs) > 0 {
			src, err := filepath.Abs(s.name)
			if err != nil {
				src = s.name
			}
			// Never the file's own name: run where the log is, cp would
			// copy the file onto itself.
			if db = "audit-" + db; filepath.Base(src) == db {
				db = "audit-copy-" + strings.TrimPrefix(db, "audit-")
			}
			cmds = append(cmds, evidenceCommand{What: "Copy the log the report was made from" + of, Command: "cp " + shellQuote(src) + " " + db})
			if lg.SHA256 != "" {
				cmds = append(cmds, evidenceCommand{What: "Check that the copy is the file the report read" + of + " (its SHA-256)", Command: "echo " + shellQuote(lg.SHA256+"  "+db) + " | sha256sum -c"})
			}
		} else {
			cmds = append(cmds, evidenceCommand{What: "Take a verified backup of the log" + of, Command: "ca log backup " + connFlags(lf, s) + " --out " + db})
		}
		dbs = append(dbs, "--db", db)
		if lg.VerifierKey != "" && lg.Checkpoint != "" {
			cmds = append(cmds,
				evidenceCommand{What: "Save the verifier key" + of + " (also in the daemon's data directory, log-verifier.vkey)", Command: "printf '%s\\n' " + shellQuote(lg.VerifierKey) + " > " + vkey},
				evidenceCommand{What: "Save the checkpoint this report shows" + of, Command: "printf '%s' " + shellQuote(lg.Checkpoint) + " > " + cp},
				evidenceCommand{What: "Verify the whole log" + of + ", and that it extends that checkpoint", Command: "ca log verify --db " + db + " --verifier-key " + vkey + " --since " + cp},
			)
		}
	}
	overPolicy := map[string]int64{}
	for _, v := range r.Validity {
		if len(v.MaxTTL) != 1 {
			continue
		}
		if d, err := time.ParseDuration(v.MaxTTL[0]); err == nil {
			overPolicy[v.Tier] = int64(d / time.Second)
		}
	}
	control := map[string]int64{}
	for name, d := range r.Control.d {
		control[name] = int64(d / time.Second)
	}
	longest := int64(0)
	if d, err := time.ParseDuration(r.Control.Longest); err == nil {
		longest = int64(d / time.Second)
	}
	cmds = append(cmds,
		evidenceCommand{What: "Export every entry as JSON lines", Command: "ca log export " + strings.Join(dbs, " ") + " --out issuance.jsonl"},
		jq("Certificates issued in the period, by tier", checkByTier, nil, count(".tier")),
		jq("… by namespace", checkByNamespace, nil, count(`(.namespace // "")`)),
		jq("… by cluster", checkByCluster, nil, count(`(.cluster_id // "")`)),
		jq("… by "+r.Issued.Bucket, checkByBucket, nil, count(fmt.Sprintf(".time[0:%d]", bucketLen))),
		jq("Longest validity granted per tier, in seconds", checkLongest, nil, jqIssued+` | group_by(.tier) | map({key: .[0].tier, value: (map(validity) | max)}) | from_entries`),
		jq("Certificates over their tier's maximum lifetime in force when issued (tiers with one maximum in the period; $max in seconds)", checkOver,
			jqArgs{}.json("max", overPolicy), jqIssued+` | map(select(.tier as $tier | $max | has($tier)) | select(validity > $max[.tier])) | map(.serial)`),
		jq("Certificates over the stated control ($control in seconds; a tier it does not name is held to $longest)", checkOverControl,
			jqArgs{}.json("control", control).json("longest", longest), jqIssued+` | if ($control | length) == 0 then [] else map(select(validity > ($control[.tier] // $longest))) | map(.serial) end`),
	)
	if limit, ok := privilegedLimit(r.Control); ok {
		cmds = append(cmds, jq("Known privileged workloads (istiod, gateways, ztunnel, the CA's admin) with a certificate over the privileged limit ($limit in seconds)", checkPrivileged,
			jqArgs{}.json("limit", int64(limit/time.Second)).json("admins", r.Privileged.AdminIdentities),
			jqKnownPrivileged+jqIssued+` | map(select(.tier != "drill" and .tier != "serving" and known and validity > $limit)) | map(.serial)`))
	}
	cmds = append(cmds,
		jq("Denied requests by reason", checkDenials, nil, `[.[] | select(.kind=="denial" and inperiod)] | map({c: ((.detail // "" | capture("class=(?<c>[^ ]+)") | .c) // .code), n: ((.detail // "" | capture("count=(?<n>[0-9]+)") | .n | tonumber) // 1)}) | group_by(.c) | map({key: .[0].c, value: (map(.n) | add)}) | from_entries`),
		jq("Rotations, intermediate changes, drills, accepted damage and recoveries of the log", checkEvents, nil, `[.[] | select(.kind=="admin" and inperiod and (.action | test("^(root-|intermediate-|drill$|accept-damage$|log-recovered$)")))] | map([.time, .action]) | sort`),
		jq("Drills run, passed, and passed with a step that could not check (not counted as passed)", checkDrills, nil, jqDrillOutcome+`[.[] | select(.kind=="admin" and inperiod and .action=="drill")] | {total: length, passed: (map(select(outcome == "passed")) | length), not_checked: (map(select(outcome == "not_checked")) | length)}`),
		jq("Starts and stops of the daemons", checkService, nil, `[.[] | select(.kind=="admin" and inperiod and (.action=="start" or .action=="stop"))] | map([.time, .action]) | sort`),
		jq("Each start's recorded policy: tiers, default tier, rules (which identities each tier holds), admin identities", "", nil, `[.[] | select(.kind=="admin" and .action=="start" and (.time | t) < $to)] | map({time, record: (.detail | capture(" record=(?<r>\\{.*)$").r // null | if . then fromjson | {tiers: (.tiers | map_values(.max_ttl)), default_tier, rules, admin_identities, dev} else "not recorded" end)})`),
		jq("Service accounts holding a live certificate at the end of the period", checkLive, nil, `[.[] | select(.kind=="issuance" and .namespace and .service_account and (.time | t) < $to and (.not_before | t) <= $to and (.not_after | t) >= $to)] | group_by(.namespace) | map({key: .[0].namespace, value: (group_by(.service_account) | map({key: .[0].service_account, value: length}) | from_entries)}) | from_entries`),
	)
	return cmds
}

// connFlags are the flags that reach the daemon of shard s.
func connFlags(lf *logFlags, s shard) string {
	conn := []string{"--addr", s.name, "--cert", lf.cert, "--key", lf.key, "--root-cert", lf.rootCert}
	if s.serverName != "" {
		conn = append(conn, "--server-name", s.serverName)
	}
	for i := range conn {
		conn[i] = shellQuote(conn[i])
	}
	return strings.Join(conn, " ")
}

// shellQuote quotes s for sh, unless it needs no quotes.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

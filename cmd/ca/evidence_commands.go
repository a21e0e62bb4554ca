package main

import (
	"fmt"
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
	checkDenials     = "denials.by_reason"
	checkEvents      = "events ([time, action] in log order)"
	checkDrills      = "drills (total, passed)"
	checkLive        = "live_at_to (namespace → service account → certificates)"
)

// jqPrelude defines the period for the recomputing jq programs: t reads an
// export's RFC 3339 time as whole seconds, which selects exactly what the
// report selected because the period's bounds are whole seconds.
const jqPrelude = `def t: sub("\\.[0-9]+Z$"; "Z") | fromdate; def inperiod: (.time | t) as $s | $s >= %d and $s < %d; `

// evidenceCommands are the exact commands that recompute the report from a
// backup of the log, with nothing but the ca binary and jq.
func evidenceCommands(r *evidenceReport, lf *logFlags) []evidenceCommand {
	start, _ := time.Parse(time.RFC3339, r.From)
	end, _ := time.Parse(time.RFC3339, r.To)
	pre := fmt.Sprintf(jqPrelude, start.Unix(), end.Unix())
	jq := func(what, check, program string) evidenceCommand {
		return evidenceCommand{What: what, Check: check, Command: "jq -cS -s '" + pre + program + "' issuance.jsonl"}
	}
	issued := `[.[] | select(.kind=="issuance" and inperiod)]`
	count := func(field string) string {
		return issued + ` | group_by(` + field + `) | map({key: (.[0] | ` + field + `), value: length}) | from_entries`
	}
	bucketLen := 10
	if r.Issued.Bucket == "month" {
		bucketLen = 7
	}

	var cmds []evidenceCommand
	if lf.db != "" {
		cmds = append(cmds, evidenceCommand{What: "Copy the log the report was made from", Command: "cp " + shellQuote(lf.db) + " issuance.db"})
	} else {
		conn := []string{"--addr", lf.addr, "--cert", lf.cert, "--key", lf.key, "--root-cert", lf.rootCert}
		if lf.serverName != "" {
			conn = append(conn, "--server-name", lf.serverName)
		}
		for i := range conn {
			conn[i] = shellQuote(conn[i])
		}
		cmds = append(cmds, evidenceCommand{What: "Take a verified backup of the log", Command: "ca log backup " + strings.Join(conn, " ") + " --out issuance.db"})
	}
	if r.Log.VerifierKey != "" {
		cmds = append(cmds,
			evidenceCommand{What: "Save the verifier key (also in the daemon's data directory, log-verifier.vkey)", Command: "printf '%s\\n' " + shellQuote(r.Log.VerifierKey) + " > log-verifier.vkey"},
			evidenceCommand{What: "Save the checkpoint this report shows", Command: "printf '%s' " + shellQuote(r.Log.Checkpoint) + " > report.checkpoint"},
			evidenceCommand{What: "Verify the whole log, and that it extends that checkpoint", Command: "ca log verify --db issuance.db --verifier-key log-verifier.vkey --since report.checkpoint"},
		)
	}
	cmds = append(cmds,
		evidenceCommand{What: "Export every entry as JSON lines", Command: "ca log export --db issuance.db --out issuance.jsonl"},
		jq("Certificates issued in the period, by tier", checkByTier, count(".tier")),
		jq("… by namespace", checkByNamespace, count(`(.namespace // "")`)),
		jq("… by cluster", checkByCluster, count(`(.cluster_id // "")`)),
		jq("… by "+r.Issued.Bucket, checkByBucket, count(fmt.Sprintf(".time[0:%d]", bucketLen))),
		jq("Longest validity granted per tier, in seconds", checkLongest, issued+` | group_by(.tier) | map({key: .[0].tier, value: (map((.not_after | t) - (.not_before | t)) | max)}) | from_entries`),
		jq("Certificates over their tier's maximum lifetime", checkOver, issued+` | map(select(`+overCondition(r)+`)) | map(.serial)`),
		jq("Denied requests by reason", checkDenials, `[.[] | select(.kind=="denial" and inperiod)] | map({c: ((.detail // "" | capture("class=(?<c>[^ ]+)") | .c) // .code), n: ((.detail // "" | capture("count=(?<n>[0-9]+)") | .n | tonumber) // 1)}) | group_by(.c) | map({key: .[0].c, value: (map(.n) | add)}) | from_entries`),
		jq("Rotations, intermediate changes and drills", checkEvents, `[.[] | select(.kind=="admin" and inperiod and (.action | test("^(root-|intermediate-|drill$)")))] | sort_by(.seq) | map([.time, .action])`),
		jq("Drills run and passed", checkDrills, `[.[] | select(.kind=="admin" and inperiod and .action=="drill")] | {total: length, passed: (map(select(.detail | startswith("passed=true"))) | length)}`),
		jq("Service accounts holding a live certificate at the end of the period", checkLive, fmt.Sprintf(`[.[] | select(.kind=="issuance" and .namespace and .service_account and (.time | t) < %d and (.not_before | t) <= %d and (.not_after | t) >= %d)] | group_by(.namespace) | map({key: .[0].namespace, value: (group_by(.service_account) | map({key: .[0].service_account, value: length}) | from_entries)}) | from_entries`, end.Unix(), end.Unix(), end.Unix())),
	)
	return cmds
}

// overCondition is the jq condition that a certificate exceeds its tier's
// maximum lifetime, for each tier whose policy was one value throughout
// the period.
func overCondition(r *evidenceReport) string {
	var terms []string
	for _, v := range r.Validity {
		if len(v.MaxTTL) != 1 {
			continue
		}
		d, err := time.ParseDuration(v.MaxTTL[0])
		if err != nil {
			continue
		}
		terms = append(terms, fmt.Sprintf(`(.tier==%q and ((.not_after | t) - (.not_before | t)) > %d)`, v.Tier, int64(d/time.Second)))
	}
	if len(terms) == 0 {
		return "false"
	}
	slices.Sort(terms)
	return strings.Join(terms, " or ")
}

// shellQuote quotes s for sh, unless it needs no quotes.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

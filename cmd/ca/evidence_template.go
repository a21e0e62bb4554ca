package main

// evidenceHTML is the page of ca report evidence (html/template, over an
// evidenceView). Colours come only from the view's judgement (C), so that
// a report over a log that failed verification shows none.
const evidenceHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>transitca evidence {{.From}} to {{.To}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.path { overflow-wrap: anywhere; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ccc; border-left-width: 6px; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; max-width: 18em; }
.card b { display: block; font-size: 1.6em; }
.card small { display: block; }
.card.ok { border-left-color: #1a7f37; } .card.ok b { color: #1a7f37; }
.card.warn { border-left-color: #bf8700; } .card.warn b { color: #9a6700; }
.card.bad { border-left-color: #cf222e; } .card.bad b { color: #cf222e; }
.card.grey { border-left-color: #8c959f; background: #f0f0f0; color: #57606a; } .card.grey b { color: #8c959f; }
.ok { color: #1a7f37; } .warn { color: #9a6700; } .bad { color: #cf222e; } .grey { color: #57606a; }
.stamps div { padding: 0.6em 1em; font-weight: bold; color: #fff; margin-bottom: 0.4em; border-radius: 4px; }
.stamp-unverified { background: #cf222e; }
.stamp-dev { background: #9a6700; }
.note { border-left: 4px solid #bf8700; background: #fff8c5; padding: 0.5em 0.8em; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; font-size: 0.85em; }
.detail { font-size: 0.85em; word-break: break-word; }
svg { max-width: 100%; height: auto; }
@media print {
  .stamps { position: fixed; top: 0; left: 0; right: 0; }
  body { margin-top: 5em; }
}
</style>
</head>
<body>
{{if or .FailedLogs .Dev}}<div class="stamps">
{{if .FailedLogs}}<div class="stamp-unverified" id="unverified-banner">UNVERIFIED LOG: {{range .FailedLogs}}{{.Shard}}: {{.Failure}}. {{end}}No figure of this report is evidence.</div>{{end}}
{{if .Dev}}<div class="stamp-dev" id="dev-banner">DEV-MODE LOG: written by a dev-mode CA with local software keys, not Vault. Nothing in it is evidence about a production CA.</div>{{end}}
</div>{{end}}
<h1>Certificate issuance evidence</h1>
<p>Period <b>{{.From}}</b> to <b>{{.To}}</b> (start included, end excluded, UTC). Generated {{.GeneratedAt}} from the {{.Source}}.
Every figure below is computed from the issuance log; the last section gives the commands that recompute each one from a copy of the log.</p>

<div class="cards">
{{range .Cards}}<div class="card {{.Class}}" id="{{.ID}}"><b>{{.Value}}</b>{{.Label}}{{if .Note}}<small>{{.Note}}</small>{{end}}</div>
{{end}}</div>
{{if .PartialLogs}}<p class="note" id="verification-note">{{range .PartialLogs}}The newest {{.AfterCheckpoint}} entries of {{.Shard}} come after its latest signed checkpoint (size {{.CheckpointSize}}). {{end}}
They were re-hashed into the log's Merkle tree with every other entry, but they are not yet covered by a signed checkpoint: nothing signed commits to them, so they could still be changed without a signature failing.
A daemon signs a checkpoint every few minutes and when it stops; a copy taken right after activity, or the log of a daemon that was killed, ends with such entries.
Take the copy again later, or with <code>ca log backup</code> (which has the daemon sign a checkpoint first), to have them covered.</p>{{end}}
<h2>Certificates issued</h2>
{{.Chart}}
<table id="by-tier"><tr><th>tier</th><th>certificates</th></tr>
{{range counts .Issued.ByTier}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>
<table id="by-namespace"><tr><th>namespace</th><th>certificates</th></tr>
{{range counts .Issued.ByNamespace}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>
<table id="by-cluster"><tr><th>cluster</th><th>certificates</th></tr>
{{range counts .Issued.ByCluster}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>

<h2>Lifetimes against the stated control and each start's policy</h2>
<p>Validity is NotAfter − NotBefore, the whole lifetime granted. Each certificate is checked twice: against the <b>stated control</b>
({{.Control.Source}}{{if .Control.Longest}}; a tier the control does not name is held to its longest lifetime, {{.Control.Longest}}{{end}}),
and against the tier's <code>max_ttl</code> that the daemon's last start before the issuance recorded. A policy loosened by a restart passes the second check and fails the first.</p>
<table id="control"><tr><th>tier</th><th>stated control</th></tr>
{{range $name, $d := .Control.Tiers}}<tr><td>{{$name}}</td><td>{{$d}}</td></tr>
{{end}}</table>
<table id="validity"><tr><th>tier</th><th>certificates</th><th>stated control</th><th>maximum in force</th><th>longest granted</th><th>certificate</th><th>over the control</th><th>over the maximum in force</th></tr>
{{range .Validity}}<tr><td>{{.Tier}}</td><td class="n">{{.Issued}}</td><td>{{none .Control}}</td><td>{{if .MaxTTL}}{{join .MaxTTL ", "}}{{else}}not recorded{{end}}{{if .Unchecked}} ({{.Unchecked}} unchecked){{end}}</td><td>{{.Longest}}</td><td><code>{{.LongestSerial}}</code></td><td class="n {{if .OverControl}}{{$.C "bad"}}{{else}}{{$.C "ok"}}{{end}}">{{len .OverControl}}</td><td class="n {{if .Over}}{{$.C "bad"}}{{else}}{{$.C "ok"}}{{end}}">{{len .Over}}</td></tr>
{{end}}</table>
{{if .AnyOver}}<table id="over-control"><tr><th>serial</th><th>identity</th><th>issued</th><th>validity</th><th>over</th><th>limit</th></tr>
{{range .Validity}}{{range .OverControl}}<tr class="{{$.C "bad"}}"><td><code>{{.Serial}}</code></td><td>{{.SPIFFEID}}</td><td>{{.Time}}</td><td>{{.Validity}}</td><td>the stated control</td><td>{{.MaxTTL}}</td></tr>
{{end}}{{range .Over}}<tr class="{{$.C "bad"}}"><td><code>{{.Serial}}</code></td><td>{{.SPIFFEID}}</td><td>{{.Time}}</td><td>{{.Validity}}</td><td>the maximum in force</td><td>{{.MaxTTL}}</td></tr>
{{end}}{{end}}</table>{{else}}<p class="{{$.C "ok"}}" id="over-none">No certificate was issued with a lifetime over the stated control or over its tier's maximum in force.</p>{{end}}

<h2>Policy changes</h2>
{{if .PolicyChanges}}<table id="policy-changes"><tr><th>time</th><th>log</th><th>started by</th><th>host</th><th>what changed from the start before</th></tr>
{{range .PolicyChanges}}<tr><td>{{.Time}}</td><td class="path">{{.Shard}}</td><td>{{.Actor}}</td><td>{{none .Host}}</td><td class="detail">{{range .Changes}}{{.}}<br>{{end}}</td></tr>
{{end}}</table>{{else}}<p id="policy-changes">No start in the period changed the tiers, the rules, the default tier or the admin identities.</p>{{end}}

<h2>Privileged identities</h2>
<p>A privileged tier is one no longer than the control's <code>privileged</code> lifetime ({{none .Privileged.Limit}}). Each start records its policy rules; these are the rules that sent identities to such a tier while the period ran.</p>
<table id="privileged-rules"><tr><th>start</th><th>log</th><th>rules to a privileged tier</th></tr>
{{range .Privileged.Rules}}<tr><td>{{.Time}}</td><td class="path">{{.Shard}}</td><td>{{if not .Recorded}}not recorded (a start written before starts recorded their rules){{else if .Rules}}{{range .Rules}}{{.}}<br>{{end}}{{else}}<span class="{{$.C "bad"}}">no rule: no identity was privileged by this start's policy</span>{{end}}</td></tr>
{{end}}</table>
<table id="privileged-identities"><tr><th>identity issued in a privileged tier</th><th>tier</th><th>certificates</th></tr>
{{range .Privileged.Identities}}<tr><td>{{.SPIFFEID}}</td><td>{{.Tier}}</td><td class="n">{{.Certificates}}</td></tr>
{{end}}</table>
<p>Known privileged workloads are istiod (service account <code>istiod</code> or <code>istiod-*</code>), gateways (a service account with <code>gateway</code> in its name), ztunnel, and the CA's admin identities as each start recorded them. Red: the certificate outlived the privileged limit; amber: it was issued in a tier that could grant more.</p>
<table id="privileged-flags"><tr><th>serial</th><th>identity</th><th>workload</th><th>issued</th><th>tier</th><th>tier maximum</th><th>validity</th></tr>
{{range .Privileged.Flagged}}<tr class="{{if .Over}}{{$.C "bad"}}{{else}}{{$.C "warn"}}{{end}}"><td><code>{{.Serial}}</code></td><td>{{.SPIFFEID}}</td><td>{{.Workload}}</td><td>{{.Time}}</td><td>{{.Tier}}</td><td>{{.TierMax}}</td><td>{{.Validity}}</td></tr>
{{end}}</table>

<h2>Denied requests</h2>
<p>By the reason recorded with each denial (the <code>reason</code> label of <code>transitca_rejections_total</code>); an aggregated entry counts the requests it stands for.</p>
<table id="denials"><tr><th>reason</th><th>requests</th></tr>
{{range counts .Denials.ByReason}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>
{{end}}</table>

<h2>Rotations, intermediate changes, drills and events of the log</h2>
<p>A drill counts as passed only when every step checked what it is for; a step that could not check (a dev-mode CA has no Vault to ask about its keys) makes it "not checked".</p>
<table id="events"><tr><th>time</th><th>action</th><th>by</th><th>detail</th></tr>
{{range .Events}}<tr><td>{{.Time}}</td><td>{{.Action}}</td><td>{{.Actor}}</td><td class="detail">{{.Detail}}</td></tr>
{{end}}</table>

<h2>When the CA ran</h2>
<p>Each start and each clean stop is an entry. A start with no stop before it follows a kill, a crash or a lost machine: its gap runs from the last entry before it, the latest the daemon can have stopped.</p>
<table id="service"><tr><th>time</th><th>log</th><th>event</th><th>detail</th></tr>
{{range .Service.Events}}<tr{{if .RollbackUnchecked}} class="{{$.C "bad"}}"{{else if .Unclean}} class="{{$.C "warn"}}"{{end}}><td>{{.Time}}</td><td class="path">{{.Shard}}</td><td>{{.Action}}{{if .Unclean}} after an unclean stop{{end}}</td><td class="detail">{{.Detail}}</td></tr>
{{end}}</table>
<table id="service-gaps"><tr><th>log</th><th>not serving from</th><th>to</th><th>seconds</th><th>stop</th></tr>
{{range .Service.Gaps}}<tr><td class="path">{{.Shard}}</td><td>{{.From}}</td><td>{{.To}}</td><td class="n">{{.Seconds}}</td><td>{{if .Clean}}clean{{else}}unclean (at most this long){{end}}</td></tr>
{{end}}</table>

<h2>Key custody</h2>
<div id="key-custody">
<p>What each start and each drill recorded about the CA's keys: where each was kept and, for a Vault Transit key, Vault's own answer.{{if .Dev}} <b class="{{$.C "bad"}}">This log was written by a dev-mode CA: every key was a local software key file in its data directory, protected by nothing but the file's permissions.</b>{{end}}</p>
<table><tr><th>recorded</th><th>at</th><th>key</th><th>where</th><th>name</th><th>type</th><th>exportable</th><th>plaintext backup</th><th>deletion allowed</th><th>versions (latest, min available, min decryption)</th></tr>
{{range .Custody}}{{$seen := .}}{{range .Keys}}<tr><td>{{$seen.Time}}</td><td>{{$seen.At}}</td><td>{{.Role}}</td><td>{{where .}}</td><td>{{.Name}}</td><td>{{.Type}}</td>{{if eq .Where "vault-transit"}}{{if .Error}}<td colspan="4" class="{{$.C "warn"}}">Vault did not answer: {{.Error}}</td>{{else}}<td class="{{if .Exportable}}{{$.C "bad"}}{{end}}">{{yesno .Exportable}}</td><td class="{{if .AllowPlaintextBackup}}{{$.C "bad"}}{{end}}">{{yesno .AllowPlaintextBackup}}</td><td class="{{if .DeletionAllowed}}{{$.C "warn"}}{{end}}">{{yesno .DeletionAllowed}}</td><td>{{.LatestVersion}}, {{.MinAvailableVersion}}, {{.MinDecryptionVersion}}</td>{{end}}{{else}}<td colspan="4">—</td>{{end}}</tr>
{{end}}{{end}}</table>
</div>

<h2>Service accounts holding a live certificate at {{.To}}</h2>
<p>Issued before the end of the period and valid at that instant: the rollout-readiness view (<code>ca report rollout</code> adds the pods that run without one).</p>
<table id="live"><tr><th>namespace</th><th>service accounts (live certificates)</th></tr>
{{range .Live}}<tr><td>{{none .Namespace}}</td><td>{{range $sa, $n := .ServiceAccounts}}{{$sa}} ({{$n}}) {{end}}</td></tr>
{{end}}</table>

<h2>The logs behind these figures</h2>
{{range .Logs}}<h3>{{.Shard}}</h3>
{{if eq .State "failed"}}<p class="{{$.C "bad"}}">The {{.Failure}}. No figure of this log is evidence.</p>
{{else if eq .State "partial"}}<p class="{{$.C "warn"}}">The log verified: {{.Entries}} entries re-hashed into the Merkle tree of root <code>{{.Root}}</code>, every stored checkpoint's signature and root checked. The latest signed checkpoint covers the first {{.CheckpointSize}}; the {{.AfterCheckpoint}} after it are not yet covered by a signature.</p>
{{else}}<p class="{{$.C "ok"}}">The log verified end to end: {{.Entries}} entries, every entry re-hashed into the Merkle tree of root <code>{{.Root}}</code>, every stored checkpoint's signature and root checked, all under the latest signed checkpoint.</p>{{end}}
{{if .SHA256}}<p>SHA-256 of the file read: <code class="sha256">{{.SHA256}}</code></p>{{end}}
{{if .Since}}<p class="{{$.C "ok"}}">The log extends the checkpoint of size {{.SinceSize}} given with --since ({{.Since}}): nothing before it was rewritten or removed.</p>{{end}}
{{if .Checkpoint}}<p>The latest signed checkpoint covers the first {{.CheckpointSize}} entries{{if .CoversPeriod}}, including every entry of the period{{else}}, <span class="{{$.C "warn"}}">not every entry of the period (the last is number {{.LastSeqInPeriod}})</span>{{end}}; its signature was checked with the key of {{.KeySource}}:</p>
<pre class="checkpoint">{{.Checkpoint}}</pre>
<p>Verifier key (Ed25519):</p>
<pre class="verifier-key">{{.VerifierKey}}</pre>
{{else}}<p class="{{$.C "bad"}}">No signed checkpoint: {{.CheckpointError}}</p>{{end}}
{{end}}
<p>The key that signs the checkpoints was {{.CheckpointKey}}.</p>

<h2>What this report cannot show</h2>
<ul id="cannot-show">
{{range .CannotShow}}<li>{{.}}</li>
{{end}}</ul>

<h2>This report's input</h2>
<table id="input">
<tr><th>command</th><td><code>{{.CommandLine}}</code></td></tr>
<tr><th>generated</th><td>{{.GeneratedAt}}</td></tr>
{{range .Logs}}<tr><th>{{.Shard}}</th><td>{{if .SHA256}}SHA-256 {{.SHA256}}; {{end}}{{.Entries}} entries, root {{none .Root}}; checkpoint of size {{.CheckpointSize}}{{if .Since}}; extends {{.Since}} (size {{.SinceSize}}){{end}}</td></tr>
{{end}}</table>
<p>Keep this file byte for byte: <code>ca report verify</code> checks it against the signature made with the log's checkpoint key, when the report was signed.</p>

<h2>Re-check every figure yourself</h2>
<p>With the <code>ca</code> binary built from source, <code>sha256sum</code> and <code>jq</code>, in an empty directory. Each jq command prints the figure named; every value from the log reaches jq through <code>--arg</code> or <code>--argjson</code>, never through the program's text.</p>
{{range .Commands}}<p>{{.What}}{{if .Check}} <small>(<code>{{.Check}}</code>)</small>{{end}}:</p>
<pre>{{.Command}}</pre>
{{end}}
</body>
</html>
`

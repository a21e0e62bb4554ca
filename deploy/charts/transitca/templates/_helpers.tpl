{{/* The name of every object: "transitca" unless fullnameOverride. */}}
{{- define "transitca.fullname" -}}
{{- .Values.fullnameOverride | default "transitca" -}}
{{- end -}}

{{- define "transitca.selectorLabels" -}}
app.kubernetes.io/name: transitca
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "transitca.labels" -}}
{{ include "transitca.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The port of a "host:port" listen address. */}}
{{- define "transitca.port" -}}
{{- splitList ":" . | last -}}
{{- end -}}

{{/* The namespace of the leader-election Lease: the daemon's default is its own. */}}
{{- define "transitca.leaseNamespace" -}}
{{- (((.Values.config.kubernetes | default dict).leader_election | default dict).namespace) | default .Release.Namespace -}}
{{- end -}}

{{- define "transitca.leaseName" -}}
{{- (((.Values.config.kubernetes | default dict).leader_election | default dict).lease_name) | default "transitca" -}}
{{- end -}}

{{/* The namespace of istiod and its istiod-tls Secret. */}}
{{- define "transitca.istiodNamespace" -}}
{{- (((.Values.config.kubernetes | default dict).istiod | default dict).namespace) | default "istio-system" -}}
{{- end -}}

{{/* The configuration file: the config values, with server.tls.dns_names naming the Services,
for Vault's Kubernetes auth vault.auth.token_file the projected token when unset, and
log.shard auto (each pod's log named after the pod) when unset. */}}
{{- define "transitca.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := $cfg.server | default dict -}}
{{- $tls := $server.tls | default dict -}}
{{- if not (hasKey $tls "dns_names") -}}
{{- $_ := set $tls "dns_names" (list (printf "%s.%s.svc" (include "transitca.fullname" .) .Release.Namespace) (printf "%s-headless.%s.svc" (include "transitca.fullname" .) .Release.Namespace) "localhost") -}}
{{- end -}}
{{- $_ := set $server "tls" $tls -}}
{{- $vault := $cfg.vault | default dict -}}
{{- $auth := $vault.auth | default dict -}}
{{- if and (eq ($auth.method | default "token") "kubernetes") (not $auth.token_file) -}}
{{- $_ := set $auth "token_file" "/var/run/secrets/vault/token" -}}
{{- $_ := set $vault "auth" $auth -}}
{{- $_ := set $cfg "vault" $vault -}}
{{- end -}}
{{- $_ := set $cfg "server" $server -}}
{{- $log := $cfg.log | default dict -}}
{{- if not (hasKey $log "shard") -}}
{{- $_ := set $log "shard" "auto" -}}
{{- else if and (eq (toString $log.shard) "") (gt (int .Values.replicas) 1) -}}
{{- fail "config.log.shard: \"\" gives every replica the same log name; leave it unset or auto (each pod's log is named after the pod) to run several replicas" -}}
{{- end -}}
{{- $_ := set $cfg "log" $log -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* "true" when the admin API listens beyond loopback: the headless Service
then names every replica's admin port, for "ca log … --addr dns:///…". */}}
{{- define "transitca.adminExposed" -}}
{{- $listen := ((.Values.config.admin | default dict).listen) | default "127.0.0.1:15015" -}}
{{- $host := splitList ":" $listen | initial | join ":" | trimAll "[]" -}}
{{- if and $listen (not (has $host (list "127.0.0.1" "localhost" "::1"))) }}true{{ end -}}
{{- end -}}

{{- define "transitca.vaultKubernetesAuth" -}}
{{- $auth := ((.Values.config.vault | default dict).auth | default dict) -}}
{{- if eq ($auth.method | default "token") "kubernetes" }}true{{ end -}}
{{- end -}}

{{/* "true" when the daemon writes istiod's serving certificate (kubernetes.istiod.enabled,
on unless set false, and the Kubernetes features not turned off). */}}
{{- define "transitca.istiodEnabled" -}}
{{- $k := .Values.config.kubernetes | default dict -}}
{{- $i := $k.istiod | default dict -}}
{{- if and (not (and (hasKey $k "enabled") (not $k.enabled))) (or (not (hasKey $i "enabled")) $i.enabled) }}true{{ end -}}
{{- end -}}

{{/* "true" in ambient mode (auth.trusted_node_accounts): the daemon reads pods. */}}
{{- define "transitca.ambient" -}}
{{- if ((.Values.config.auth | default dict).trusted_node_accounts) }}true{{ end -}}
{{- end -}}

{{/* The user name of the daemon's service account, which the admission policies match. */}}
{{- define "transitca.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "transitca.fullname" . }}
{{- end -}}

{{/* The admission policies are admissionregistration.k8s.io/v1, served from Kubernetes 1.30
on. Rendered against a cluster (helm install, upgrade, template --validate), whose API
versions name their kinds, the chart refuses a cluster without them; rendered offline
("helm template", whose API versions are Helm's defaults) it renders them. */}}
{{- define "transitca.checkAdmissionPolicyAPI" -}}
{{- $caps := .Capabilities.APIVersions -}}
{{- if and ($caps.Has "apps/v1/StatefulSet") (not ($caps.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")) -}}
{{- fail (printf "this cluster (Kubernetes %s) does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy, which the chart's admission policies need: Kubernetes 1.30 or later" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}

{{/* The Lease rules of deploy/rbac/role.yaml, in the Lease's namespace. */}}
{{- define "transitca.leaseRules" }}
  # Leader election: the one Lease by name; create cannot be limited by
  # name (the admission policy refuses other names).
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    resourceNames: [{{ include "transitca.leaseName" . | quote }}]
    verbs: ["get", "update"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["create"]
{{- end }}

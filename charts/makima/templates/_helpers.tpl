{{/* Chart name, truncated to a DNS label. */}}
{{- define "makima.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full resource name prefix. */}}
{{- define "makima.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "makima.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "makima.labels" -}}
helm.sh/chart: {{ include "makima.chart" . }}
app.kubernetes.io/name: {{ include "makima.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: makima
{{- end -}}

{{/* Selector labels of one component (pass dict "ctx" . "component" "operator"). */}}
{{- define "makima.selectorLabels" -}}
app.kubernetes.io/name: {{ include "makima.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's pods (pass dict "ctx" . "component" "operator" "extra" <podLabels>):
     the common labels plus the component, as one map, so no key appears twice; extra labels
     never replace these (the selector depends on them). */}}
{{- define "makima.podLabels" -}}
{{- $labels := include "makima.labels" .ctx | fromYaml -}}
{{- $_ := set $labels "app.kubernetes.io/component" .component -}}
{{- toYaml (merge $labels (.extra | default dict)) -}}
{{- end -}}

{{/* The daemon's exec probe: file $0 touched less than $1 seconds ago (sh and coreutils only;
     the same text as HEALTH_PROBE in operator/makima/cli/daemon.py, a test compares). */}}
{{- define "makima.daemonHealthProbe" -}}
test "$(( $(date +%s) - $(stat -c %Y "$0") ))" -lt "$1"
{{- end -}}

{{- define "makima.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "makima.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "makima.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Image of agent pods for one profile (the argument): agent.images[profile], else the
     operator image with the tag suffix of the profile's Dockerfile target (agent-<cli>);
     the scripted agent needs nothing but makima, so it gets the operator image. */}}
{{- define "makima.agentImageFor" -}}
{{- $root := index . 0 -}}
{{- $profile := index . 1 -}}
{{- $targets := dict "claude-code" "agent-claude" "codex" "agent-codex" "gemini" "agent-gemini" "opencode" "agent-opencode" "aider" "agent-aider" -}}
{{- $given := index ($root.Values.agent.images | default dict) $profile -}}
{{- if $given -}}
{{- $given -}}
{{- else if hasKey $targets $profile -}}
{{- printf "%s:%s-%s" $root.Values.image.repository (default $root.Chart.AppVersion $root.Values.image.tag) (get $targets $profile) -}}
{{- else -}}
{{- include "makima.image" $root -}}
{{- end -}}
{{- end -}}

{{/* Every profile's image, as JSON (MAKIMA_AGENT_IMAGES). */}}
{{- define "makima.agentImages" -}}
{{- $root := . -}}
{{- $out := dict -}}
{{- range $p := list "claude-code" "codex" "gemini" "opencode" "aider" "scripted" -}}
{{- $_ := set $out $p (include "makima.agentImageFor" (list $root $p)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* URL Job pods and daemons use to reach the operator API. */}}
{{- define "makima.apiUrl" -}}
{{- if .Values.operator.apiUrl -}}
{{- .Values.operator.apiUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "makima.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}
{{- end -}}

{{/* Active/standby replicas: leader election over a Lease, only with more than one replica. */}}
{{- define "makima.leaderElection" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{- define "makima.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "makima.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret + key holding the DSN. */}}
{{- define "makima.database.secretName" -}}
{{- if .Values.postgresql.bundled.enabled -}}
{{- include "makima.postgresql.fullname" . -}}
{{- else -}}
{{- required "database.existingSecret is required: name a Secret holding the PostgreSQL DSN, or set postgresql.bundled.enabled=true" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "makima.database.secretKey" -}}
{{- if .Values.postgresql.bundled.enabled -}}database-url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end -}}

{{/* Namespaces where agent-pod NetworkPolicies go. */}}
{{- define "makima.networkPolicyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end -}}

{{/* Egress of agent pods and daemons: the operator API, cluster DNS, the git host (networkPolicy.gitHost). */}}
{{- define "makima.networkPolicy.agentEgress" -}}
{{- $np := .Values.networkPolicy -}}
# the operator API (task reports, step submissions, the daemon's WebSocket)
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Release.Namespace }}
      podSelector:
        matchLabels:
          {{- include "makima.selectorLabels" (dict "ctx" . "component" "operator") | nindent 10 }}
  ports:
    - protocol: TCP
      port: {{ .Values.operator.apiPort }}
# cluster DNS
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ $np.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml ($np.dns.podLabels | default (dict "k8s-app" "kube-dns")) | nindent 10 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
# the git host (and the model's API, on the same public addresses and ports)
- to:
    {{- range $np.gitHost.cidrs }}
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
    {{- end }}
  ports:
    {{- range $np.gitHost.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Restricted container security context shared by every container. */}}
{{- define "makima.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted pod security context for the makima image (UID 10001). */}}
{{- define "makima.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
RBAC rules: exactly the API calls in operator/makima/kube_calls.py (OPERATOR_RULES,
NAMED_RULES, DAEMON_CREDENTIALS_RULES when rbac.daemonRepositoryCredentials);
tests/ship/test_rbac.py fails on any difference. Namespaced rules go in a Role per
watched namespace (or the ClusterRole with clusterWide); cluster-scoped reads always
in a ClusterRole. The Lease rules (LEASE_RULES) only when replicas > 1, in a Role of the
release namespace (where the Lease is), whatever the watch mode.
*/}}
{{/* The namespaces watched, as a list: [] = all (clusterWide), else watchNamespaces or the release's. */}}
{{- define "makima.watchedNamespaces" -}}
{{- if .Values.clusterWide -}}
{{- toJson (list) -}}
{{- else -}}
{{- toJson (.Values.watchNamespaces | default (list .Release.Namespace)) -}}
{{- end -}}
{{- end -}}

{{- define "makima.rules.namespaced" -}}
- apiGroups: ["makima.dev"]
  resources: ["directives"]
  verbs: ["list", "watch", "patch", "delete"]
- apiGroups: ["makima.dev"]
  resources: ["directives/status"]
  verbs: ["patch"]
- apiGroups: ["makima.dev"]
  resources: ["directivesteps"]
  verbs: ["list", "watch", "create"]
- apiGroups: ["makima.dev"]
  resources: ["directivesteps/status"]
  verbs: ["patch"]
- apiGroups: ["makima.dev"]
  resources: ["agents"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: ["makima-daemon-token"]
  verbs: ["get"]
{{- if .Values.rbac.daemonRepositoryCredentials }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{- define "makima.rules.cluster" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}

{{- define "makima.rules.lease" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}

{{/* Chart name, overridable. */}}
{{- define "tracelight.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every resource (and as the name of the webhook configuration).
Truncated to 63 characters: some Kubernetes name fields are limited by the DNS label spec.
*/}}
{{- define "tracelight.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tracelight.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tracelight.labels" -}}
helm.sh/chart: {{ include "tracelight.chart" . }}
{{ include "tracelight.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tracelight
{{- end }}

{{/* Labels selecting the operator pods. */}}
{{- define "tracelight.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tracelight.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tracelight.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tracelight.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Service in front of the webhook; its DNS names go into the serving certificate. */}}
{{- define "tracelight.webhookService" -}}
{{- printf "%s-webhook" (include "tracelight.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret holding the webhook's CA and serving certificate (both certificate modes). */}}
{{- define "tracelight.certSecret" -}}
{{- printf "%s-webhook-tls" (include "tracelight.fullname" .) | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "tracelight.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Host of webhook.url (brackets of an IPv6 literal removed), for the certificate. */}}
{{- define "tracelight.urlHost" -}}
{{- $authority := regexFind "^https://(\\[[^\\]]+\\]|[^/:]+)" .Values.webhook.url | trimPrefix "https://" }}
{{- $authority | trimPrefix "[" | trimSuffix "]" }}
{{- end }}

{{/*
Port the operator's webhook listens on: the container port, or, for an operator run outside the
cluster (operator.enabled=false), the port of webhook.url (443 when the URL has none).
*/}}
{{- define "tracelight.webhookPort" -}}
{{- if and .Values.webhook.url (not .Values.operator.enabled) }}
{{- $port := regexFind ":[0-9]+(/|$)" (regexReplaceAll "^https://(\\[[^\\]]+\\]|[^/:]+)" .Values.webhook.url "") | trimPrefix ":" | trimSuffix "/" }}
{{- default "443" $port }}
{{- else }}
{{- .Values.webhook.port }}
{{- end }}
{{- end }}

{{/* Extra certificate names: webhook.extraSANs and the host of webhook.url, as a YAML list. */}}
{{- define "tracelight.extraSANs" -}}
{{- $sans := .Values.webhook.extraSANs }}
{{- if .Values.webhook.url }}
{{- $sans = append $sans (include "tracelight.urlHost" .) }}
{{- end }}
{{- toYaml (uniq $sans) }}
{{- end }}

{{/* Directory where cert-manager's Secret is mounted (cert-manager mode). */}}
{{- define "tracelight.certDir" -}}
/etc/tracelight/tls
{{- end }}

{{/* The operator's command line. */}}
{{/*
What of the agents' admin port is reachable from outside their pods: agent.adminExposure, or
metrics when the PodMonitor needs it. A PodMonitor with `health` would scrape nothing.
*/}}
{{- define "tracelight.agentAdminExposure" -}}
{{- $exposure := .Values.agent.adminExposure -}}
{{- if and .Values.monitoring.podMonitor.enabled (eq $exposure "health") -}}
{{- fail "monitoring.podMonitor.enabled needs the agents' /metrics on the pod IP: set agent.adminExposure to metrics or all (or leave it empty)" -}}
{{- end -}}
{{- if $exposure -}}
{{- $exposure -}}
{{- else if .Values.monitoring.podMonitor.enabled -}}
metrics
{{- else -}}
health
{{- end -}}
{{- end -}}

{{- define "tracelight.args" -}}
- controller
- --webhook-addr=0.0.0.0:{{ include "tracelight.webhookPort" . }}
- --admin-addr=0.0.0.0:{{ .Values.admin.port }}
- --webhook-config={{ include "tracelight.fullname" . }}
- --service-name={{ include "tracelight.webhookService" . }}
- --log-format={{ .Values.operator.logFormat }}
- --leader-election={{ .Values.operator.leaderElection.enabled }}
- --lease-name={{ .Values.operator.leaderElection.leaseName }}
- --native-sidecar={{ .Values.operator.nativeSidecar }}
- --agent-reports={{ .Values.operator.agentReports }}
- --probe-ratio={{ .Values.operator.probeRatio }}
{{- with .Values.operator.agentReportInterval }}
- --agent-report-interval={{ . }}
{{- end }}
- --agent-image={{ .Values.agent.image | default (include "tracelight.image" .) }}
- --agent-admin-exposure={{ include "tracelight.agentAdminExposure" . }}
- --agent-host-port-range={{ .Values.agent.hostPortRange }}
{{- with .Values.secrets.sourceNamespaces }}
- --secret-namespace={{ join "," . }}
{{- end }}
{{- range $language, $image := .Values.instrumentation.images }}
- --instrumentation-image={{ $language }}={{ $image }}
{{- end }}
{{- if eq .Values.certificates.mode "cert-manager" }}
- --cert-mode=files
- --cert-dir={{ include "tracelight.certDir" . }}
{{- else }}
- --cert-mode=self-signed
- --cert-secret={{ include "tracelight.certSecret" . }}
- --cert-validity={{ .Values.certificates.validity }}
{{- range (include "tracelight.extraSANs" . | fromYamlArray) }}
- --extra-san={{ . }}
{{- end }}
{{- end }}
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Fails the install when a Prometheus Operator object is enabled but the cluster does not serve
monitoring.coreos.com/v1 (the Prometheus Operator CRDs are missing): a silently skipped
ServiceMonitor or PrometheusRule would look like working monitoring. Argument: the value's name.
*/}}
{{- define "tracelight.requireMonitoringAPI" -}}
{{- if not (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}
{{- fail (printf "%s=true needs the Prometheus Operator CRDs (API monitoring.coreos.com/v1), which this cluster does not serve: install them first, or set %s=false (with `helm template`, pass --api-versions monitoring.coreos.com/v1)" .value .value) }}
{{- end }}
{{- end }}

{{/* Service in front of the operator's admin port (/metrics), for the ServiceMonitor. */}}
{{- define "tracelight.metricsService" -}}
{{- printf "%s-metrics" (include "tracelight.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

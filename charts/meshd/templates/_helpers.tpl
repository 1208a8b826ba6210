{{/*
Names shared by every template. Each name that meshd is also told through an
environment variable (the Service, the Lease, the CA Secret, the webhook
configurations) is defined once here, so the RBAC rules restricted to those
names and the flags always agree.
*/}}

{{- define "meshd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: the release name when it already says meshd. */}}
{{- define "meshd.fullname" -}}
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

{{- define "meshd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshd.labels" -}}
helm.sh/chart: {{ include "meshd.chart" . }}
{{ include "meshd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: control-plane
app.kubernetes.io/part-of: meshd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "meshd.serviceAccountName" -}}
{{- required "serviceAccount.name must be set: it is part of the control plane's SPIFFE ID" .Values.serviceAccount.name }}
{{- end }}

{{/* The meshd image: the control plane, and the injected meshd-init container. */}}
{{- define "meshd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* <service>.<namespace>.svc: the webhook certificate's name, the xDS host. */}}
{{- define "meshd.serviceHost" -}}
{{- printf "%s.%s.svc" (include "meshd.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "meshd.leaseName" -}}
{{- default (printf "%s-leader" (include "meshd.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "meshd.caSecretName" -}}
{{- default (printf "%s-ca" (include "meshd.fullname" .)) .Values.caSecret.name }}
{{- end }}

{{- define "meshd.mutatingWebhookConfigurationName" -}}
{{- printf "%s-injector" (include "meshd.fullname" .) }}
{{- end }}

{{- define "meshd.validatingWebhookConfigurationName" -}}
{{- printf "%s-validator" (include "meshd.fullname" .) }}
{{- end }}

{{/* The ClusterRole with the identity-Secret rules (bound cluster-wide or per namespace). */}}
{{- define "meshd.identitySecretsRoleName" -}}
{{- printf "%s-identity-secrets" (include "meshd.fullname" .) }}
{{- end }}

{{/*
Seconds of a duration as meshd's --drain-period and --workload-cert-ttl parse
it: a whole number with the unit s, m or h. values.schema.json already allows
nothing else; this fails the same way when the schema is skipped
(--skip-schema-validation), so a guard built on it never passes a value it
cannot read. Called with (dict "name" "drainPeriod" "value" .Values.drainPeriod).
*/}}
{{- define "meshd.durationSeconds" -}}
{{- $value := toString .value }}
{{- if not (regexMatch "^[0-9]{1,9}[smh]$" $value) }}
{{- fail (printf "%s: %q is not a duration meshd accepts: a whole number with the unit s, m or h (e.g. 90s, 10m, 24h)" .name $value) }}
{{- end }}
{{- $number := regexFind "^[0-9]+" $value }}
{{- $unit := trimPrefix $number $value }}
{{- /* atoi is decimal (int would read a leading 0 as octal), like meshd */ -}}
{{- mul (atoi $number) (get (dict "s" 1 "m" 60 "h" 3600) $unit) }}
{{- end }}

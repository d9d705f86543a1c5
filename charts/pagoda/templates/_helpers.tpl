{{- define "pagoda.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "pagoda.operatorName" -}}
{{ include "pagoda.fullname" . | trunc 54 | trimSuffix "-" }}-operator
{{- end }}

{{- define "pagoda.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "pagoda.labels" -}}
{{ include "pagoda.selectorLabels" . }}
app.kubernetes.io/part-of: pagoda
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "pagoda.serviceAccountName" -}}
{{ .Values.serviceAccount.name | default (include "pagoda.operatorName" .) }}
{{- end }}


{{- /* "true" when the operator watches namespaces all named exactly (no kopf
glob pattern): its RBAC is then a Role in each of them. */}}
{{- define "pagoda.watchesExactNamespaces" -}}
{{- $exact := true }}
{{- range .Values.operator.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}{{ $exact = false }}{{ end }}
{{- end }}
{{- if and .Values.operator.watchNamespaces $exact }}true{{ end }}
{{- end }}

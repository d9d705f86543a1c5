{{- define "pagoda.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "pagoda.operatorName" -}}
{{ include "pagoda.fullname" . | trunc 54 | trimSuffix "-" }}-operator
{{- end }}

{{- define "pagoda.gatewayName" -}}
{{ include "pagoda.fullname" . | trunc 55 | trimSuffix "-" }}-gateway
{{- end }}

{{- /* Labels of one component's objects, called with (list $ "operator") or
(list $ "gateway"); the selector labels are those a component's Deployment
and Service select its pods by. */}}
{{- define "pagoda.componentSelectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "pagoda.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "pagoda.componentSelectorLabels" . }}
app.kubernetes.io/part-of: pagoda
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end }}

{{- /* The operator's, which also labels what belongs to no component (the CRD, dashboards). */}}
{{- define "pagoda.selectorLabels" -}}
{{ include "pagoda.componentSelectorLabels" (list . "operator") }}
{{- end }}

{{- define "pagoda.labels" -}}
{{ include "pagoda.componentLabels" (list . "operator") }}
{{- end }}

{{- define "pagoda.gatewaySelectorLabels" -}}
{{ include "pagoda.componentSelectorLabels" (list . "gateway") }}
{{- end }}

{{- define "pagoda.gatewayLabels" -}}
{{ include "pagoda.componentLabels" (list . "gateway") }}
{{- end }}

{{- /* The pod and container security of both components: non-root, nothing
written outside mounted volumes, no privilege to gain. */}}
{{- define "pagoda.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "pagoda.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{- /* The operator image runs both components; the gateway's image values,
left empty, take the operator's. */}}
{{- define "pagoda.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "pagoda.gatewayImage" -}}
{{- $op := .Values.operator.image -}}
{{- $gw := .Values.gateway.image -}}
{{ $gw.repository | default $op.repository }}:{{ $gw.tag | default $op.tag | default .Chart.AppVersion }}
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

{{- /* A ClusterRole or Role and the binding of it to one of the release's
ServiceAccounts, both named `name`. Called with a dict: root ($), component
(its labels), kind (ClusterRole or Role), name, namespace (a Role's),
rules (rendered YAML list items) and account. */}}
{{- define "pagoda.boundRole" -}}
{{- $metadata := include "pagoda.boundRoleMetadata" . -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ .kind }}
{{ $metadata }}
rules:
{{- .rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ .kind }}Binding
{{ $metadata }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ .kind }}
  name: {{ .name }}
subjects:
- kind: ServiceAccount
  name: {{ .account }}
  namespace: {{ .root.Release.Namespace }}
{{- end }}

{{- define "pagoda.boundRoleMetadata" -}}
metadata:
  name: {{ .name }}
  {{- with .namespace }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "pagoda.componentLabels" (list .root .component) | nindent 4 }}
{{- end }}

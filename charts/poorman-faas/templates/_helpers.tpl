{{/* Labels on every object of the chart. */}}
{{- define "faas.labels" -}}
app.kubernetes.io/name: faas-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels that select the gateway pods. */}}
{{- define "faas.selector" -}}
app.kubernetes.io/name: faas-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The namespace of the gateway and its functions: namespace.name, else the release's. */}}
{{- define "faas.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

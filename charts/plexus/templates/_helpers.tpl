{{/* Labels on every object of the release. */}}
{{- define "plexus.labels" -}}
app.kubernetes.io/name: plexus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selects the controller pods. */}}
{{- define "plexus.controllerSelector" -}}
app.kubernetes.io/name: plexus
app.kubernetes.io/component: controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "plexus.image" -}}
{{ .image.repository }}:{{ .image.tag | default .appVersion }}
{{- end }}

{{/* host:port of the controller's gRPC service, as proxies dial it. */}}
{{- define "plexus.controllerAddr" -}}
plexus-controller.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:8090
{{- end }}

{{/* Prefix of the release's cluster-scoped objects: release name and namespace, so two
installs (even both named `plexus`, in different namespaces) never share one. */}}
{{- define "plexus.clusterScopedName" -}}
{{ printf "%s-%s" .Release.Name .Release.Namespace | trunc 200 | trimSuffix "-" }}
{{- end }}

{{/* The release's MutatingWebhookConfiguration, which its controller alone patches. */}}
{{- define "plexus.webhookConfiguration" -}}
{{ include "plexus.clusterScopedName" . }}-injector
{{- end }}

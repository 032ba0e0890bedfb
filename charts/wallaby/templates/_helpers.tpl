{{/* Names, labels and the pieces shared by the API server and the workers. */}}

{{- define "wallaby.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wallaby.fullname" -}}
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

{{- define "wallaby.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wallaby.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wallaby.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wallaby.labels" -}}
helm.sh/chart: {{ include "wallaby.chart" . }}
{{ include "wallaby.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "wallaby.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wallaby.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wallaby.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "wallaby.configName" -}}
{{- printf "%s-config" (include "wallaby.fullname" .) -}}
{{- end -}}

{{/* A worker's resource name: <fullname>-<item name>, at most 52 characters (a CronJob's Jobs add 11, a
StatefulSet's revision label as many); a longer one is cut and ends with a hash of the whole, so two stay apart. */}}
{{- define "wallaby.workerName" -}}
{{- $full := printf "%s-%s" (include "wallaby.fullname" .root) .item.name -}}
{{- if le (len $full) 52 -}}
{{- $full -}}
{{- else -}}
{{- printf "%s-%s" ($full | trunc 43 | trimSuffix "-") ($full | sha256sum | trunc 8) -}}
{{- end -}}
{{- end -}}

{{/* The pods' annotations that roll them when the ConfigMap changes. */}}
{{- define "wallaby.configChecksum" -}}
{{- if .Values.config.enabled -}}
checksum/config: {{ toJson .Values.config.data | sha256sum }}
{{- end -}}
{{- end -}}

{{/* envFrom: the chart's ConfigMap, then .Values.envFrom, then the extra list given as .extra. */}}
{{- define "wallaby.envFrom" -}}
{{- $list := list -}}
{{- if .root.Values.config.enabled -}}
{{- $list = append $list (dict "configMapRef" (dict "name" (include "wallaby.configName" .root))) -}}
{{- end -}}
{{- $list = concat $list .root.Values.envFrom (.extra | default list) -}}
{{- if $list }}
envFrom:
{{- toYaml $list | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
env: the chart's own variables (.defaults, a list of EnvVar) unless the user's lists (.root.Values.env, then
.extra) name them, then the user's: every name once (server-side apply refuses a name twice).
*/}}
{{- define "wallaby.env" -}}
{{- $user := concat .root.Values.env (.extra | default list) -}}
{{- $seen := dict -}}
{{- $list := list -}}
{{- range $user -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- range (.defaults | default list) -}}
{{- if not (hasKey $seen .name) -}}
{{- $list = append $list . -}}
{{- end -}}
{{- end -}}
{{- $byName := dict -}}
{{- $order := list -}}
{{- range $user -}}
{{- if not (hasKey $byName .name) -}}
{{- $order = append $order .name -}}
{{- end -}}
{{- $_ := set $byName .name . -}}
{{- end -}}
{{- range $order -}}
{{- $list = append $list (get $byName .) -}}
{{- end -}}
{{- if $list }}
env:
{{- toYaml $list | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "wallaby.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* The Secret holding WALLABY_API_TOKEN: api.auth.existingSecret, else the chart's own (api.auth.generate), else
none. */}}
{{- define "wallaby.tokenSecret" -}}
{{- if .Values.api.auth.existingSecret -}}
{{- .Values.api.auth.existingSecret -}}
{{- else if and .Values.api.auth.generate (not .Values.api.auth.insecure) -}}
{{- printf "%s-api-token" (include "wallaby.fullname" .) -}}
{{- end -}}
{{- end -}}

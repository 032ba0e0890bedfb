{{/*
The pod template of one worker item. Input: dict root (the top context), item (the workers.items entry), name (its
resource name), restartPolicy, and for a statefulset the bytewax pieces (bytewax: true).
*/}}
{{- define "wallaby.workerPodTemplate" -}}
{{- $root := .root -}}
{{- $item := .item -}}
{{- $stateful := eq $item.kind "statefulset" -}}
{{- $defaults := list -}}
{{- if $stateful -}}
{{- $defaults = list
  (dict "name" "BYTEWAX_POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name")))
  (dict "name" "BYTEWAX_STATEFULSET_NAME" "value" .name)
  (dict "name" "BYTEWAX_HOSTFILE_PATH" "value" "/etc/bytewax/hostfile.txt")
  (dict "name" "BYTEWAX_PROCESSES_COUNT" "value" (toString (dig "processes" 2 $item)))
  (dict "name" "BYTEWAX_WORKERS_PER_PROCESS" "value" "1")
  (dict "name" "BYTEWAX_RECOVERY_DIRECTORY" "value" "/var/bytewax/recovery")
  (dict "name" "BYTEWAX_SNAPSHOT_INTERVAL" "value" (toString (dig "snapshotInterval" 2 $item)))
  (dict "name" "BYTEWAX_RECOVERY_BACKUP_INTERVAL" "value" (toString (dig "backupInterval" 0 $item)))
-}}
{{- end -}}
{{- if $item.flowSecret -}}
{{- $defaults = append $defaults (dict "name" "WALLABY_FLOW_FILE" "value" "/etc/wallaby/flow/flow.json") -}}
{{- end -}}
metadata:
  labels:
    {{- include "wallaby.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: worker
    wallaby.io/worker: {{ $item.name }}
    {{- with $item.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $checksum := include "wallaby.configChecksum" $root }}
  {{- $hostfile := "" }}
  {{- if $stateful }}
  {{- $hostfile = printf "checksum/hostfile: %s" (include "wallaby.hostfile" . | sha256sum) }}
  {{- end }}
  {{- if or $checksum $hostfile $item.podAnnotations }}
  annotations:
    {{- with $checksum }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $hostfile }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $item.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "wallaby.serviceAccountName" $root }}
  # workers never call the Kubernetes API
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .restartPolicy }}
  restartPolicy: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  # a worker finishes its epoch in flight and checkpoints on SIGTERM
  terminationGracePeriodSeconds: {{ dig "terminationGracePeriodSeconds" 60 $item }}
  {{- if $stateful }}
  initContainers:
    # This process's bytewax recovery partition (one of processes) in its own volume, made once.
    - name: init-recovery
      image: {{ include "wallaby.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        - python
        - -c
        - |
          import os, pathlib, tempfile
          from bytewax.recovery import init_db_dir
          store = pathlib.Path(os.environ["BYTEWAX_RECOVERY_DIRECTORY"])
          count = int(os.environ["BYTEWAX_PROCESSES_COUNT"])
          index = int(os.environ["BYTEWAX_POD_NAME"].rpartition("-")[2])
          if not any(store.glob("part-*.sqlite3")):
              with tempfile.TemporaryDirectory(dir=store) as made:
                  init_db_dir(pathlib.Path(made), count)
                  os.replace(pathlib.Path(made) / f"part-{index}.sqlite3", store / f"part-{index}.sqlite3")
          print(f"recovery partition {index} of {count} in {store}")
      {{- with (include "wallaby.env" (dict "root" (dict "Values" (dict "env" (list))) "defaults" $defaults) | trim) }}
      {{- . | nindent 6 }}
      {{- end }}
      resources:
        requests:
          cpu: 10m
          memory: 64Mi
        limits:
          memory: 256Mi
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: recovery
          mountPath: /var/bytewax/recovery
  {{- end }}
  containers:
    - name: worker
      image: {{ include "wallaby.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        {{- if $item.command }}
        {{- toYaml $item.command | nindent 8 }}
        {{- else if $stateful }}
        {{- toYaml (list "python" "-m" "bytewax.run" "dataflows.flow:flow") | nindent 8 }}
        {{- else }}
        {{- toYaml (list "wallaby-worker") | nindent 8 }}
        {{- end }}
      {{- with $item.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $stateful }}
      ports:
        - name: bytewax
          containerPort: {{ dig "port" 9999 $item }}
          protocol: TCP
      {{- end }}
      {{- with (include "wallaby.env" (dict "root" $root "defaults" $defaults "extra" $item.env) | trim) }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with (include "wallaby.envFrom" (dict "root" $root "extra" $item.envFrom) | trim) }}
      {{- . | nindent 6 }}
      {{- end }}
      resources:
        {{- toYaml ($item.resources | default $root.Values.workers.resources) | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: data
          mountPath: /home/wallaby/.wallaby
        {{- if $item.flowSecret }}
        - name: flow
          mountPath: /etc/wallaby/flow
          readOnly: true
        {{- end }}
        {{- if $stateful }}
        - name: hostfile
          mountPath: /etc/bytewax
          readOnly: true
        - name: recovery
          mountPath: /var/bytewax/recovery
        {{- end }}
  volumes:
    {{- include "wallaby.tmpVolume" $root | nindent 4 }}
    - name: data
      {{- if and (eq $item.kind "deployment") (dig "persistence" "enabled" false $item) }}
      persistentVolumeClaim:
        claimName: {{ dig "persistence" "existingClaim" "" $item | default (printf "%s-data" .name) }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- with $item.flowSecret }}
    - name: flow
      secret:
        secretName: {{ .name }}
        items:
          - key: {{ .key | default "flow.json" }}
            path: flow.json
    {{- end }}
    {{- if $stateful }}
    - name: hostfile
      configMap:
        name: {{ .name }}-hostfile
    {{- end }}
  {{- with $item.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $item.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $item.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* The bytewax hostfile of a statefulset item: one address per process, in process order (bytewax.run reads it,
and takes its process id from the pod ordinal: BYTEWAX_POD_NAME minus "BYTEWAX_STATEFULSET_NAME-"). */}}
{{- define "wallaby.hostfile" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $port := dig "port" 9999 .item -}}
{{- range $i := until (int (dig "processes" 2 .item)) -}}
{{ printf "%s-%d.%s.%s.svc.%s:%v" $name $i $name $root.Release.Namespace $root.Values.clusterDomain $port }}
{{ end -}}
{{- end -}}

{{/* Pod failure policy of a worker Job (restartPolicy Never): a permanent failure (1), a bad spec or flag (2) and
a fenced worker (3) fail the Job at once; a transient failure (75) and an evicted pod are retried. */}}
{{- define "wallaby.podFailurePolicy" -}}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: worker
        operator: In
        values: [1, 2, 3]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
{{- end -}}

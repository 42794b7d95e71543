{{/* The chart name, overridable. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: "<release>-kubetune", or the release name when it already holds the chart name. */}}
{{- define "kubetune.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: kubetune
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's pods (app.kubernetes.io/name is contract.OPERATOR_APP_NAME). */}}
{{- define "kubetune.operatorSelectorLabels" -}}
app.kubernetes.io/name: kubetune-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* All labels of operator resources. */}}
{{- define "kubetune.operatorLabels" -}}
{{ include "kubetune.labels" . }}
{{ include "kubetune.operatorSelectorLabels" . }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" or "repository@digest"; the tag defaults to the chart's appVersion. Call with (dict "image" .Values.image "root" .). */}}
{{- define "kubetune.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces the operator serves, as a comma-separated list (empty: cluster-wide). */}}
{{- define "kubetune.watchNamespaces" -}}
{{- join "," .Values.operator.watchNamespaces }}
{{- end }}

{{/* Peering objects are hooks, created after their CRDs; re-created on upgrade, never deleted on uninstall. */}}
{{- define "kubetune.peeringHookAnnotations" -}}
helm.sh/hook: post-install,post-upgrade
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}

{{/* What the operator does inside the namespaces it serves. */}}
{{- define "kubetune.namespacedRules" -}}
# FineTuneJobs: kopf watches them and patches finalizers and its progress annotations; the
# operator deletes a finished one when its spec.ttlSecondsAfterFinished has passed.
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch, update, delete]
# Status: the operator's fields; holding get/patch also lets it grant them to the trainer.
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [get, patch, update]
# The training Job and the ConfigMap holding the job's spec.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, list, watch, patch, delete]
# Multi-node jobs: a headless Service gives every pod of the gang a stable name; the output
# PVC's access modes are read to refuse a multi-node job whose volume is not ReadWriteMany.
- apiGroups: [""]
  resources: [services]
  verbs: [create, get, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# The trainer's identity in each namespace: ServiceAccount, Role and RoleBinding, all named
# kubetune-trainer (a Role may only grant get/patch on finetunejobs/status).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create]
- apiGroups: [""]
  resources: [serviceaccounts]
  resourceNames: [kubetune-trainer]
  verbs: [get, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  resourceNames: [kubetune-trainer]
  verbs: [get, patch]
{{- end }}

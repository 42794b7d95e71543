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
# Only the verbs the operator and kopf use (tests/chart/test_chart_rbac_e2e.py checks both ways).
# FineTuneJobs: kopf watches them and patches finalizers and its progress annotations; the
# operator deletes a finished one when its spec.ttlSecondsAfterFinished has passed.
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [list, watch, patch, delete]
# Status: the operator's fields; holding patch also lets it grant that to each trainer (on its own name).
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [patch]
# The training Job (deleted to suspend) and what it needs: the ConfigMap holding the spec and, for
# multi-node jobs, a headless Service. get: a create answered "already exists" reads the owner.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [create, get]
# patch: after an out-of-memory adjustment, the spec ConfigMap holds the adjusted spec.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, patch]
# The output PVC's access modes are read to refuse a multi-node job whose volume is not ReadWriteMany.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
# Each FineTuneJob's trainer identity: ServiceAccount, Role and RoleBinding <name>-trainer, owned by it;
# the Role grants only patch on that FineTuneJob's status.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, get]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, get]
{{- end }}

{{/* policy.allowedImages, or the trainer image repository at any tag or digest: a JSON list of patterns. */}}
{{- define "kubetune.allowedImages" -}}
{{- if .Values.policy.allowedImages }}
{{- toJson .Values.policy.allowedImages }}
{{- else }}
{{- toJson (list (printf "%s([:@][^\\s]+)?" (regexQuoteMeta .Values.trainerImage.repository))) }}
{{- end }}
{{- end }}

{{/* A JSON list of patterns as a CEL list of raw strings. */}}
{{- define "kubetune.celPatterns" -}}
[{{- range $index, $pattern := . }}{{ if $index }}, {{ end }}r'{{ $pattern }}'{{- end }}]
{{- end }}

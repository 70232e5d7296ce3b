{{/* Names: <release> when it contains the chart name, else <release>-<chart>; at most 63 characters. */}}
{{- define "sigma0.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sigma0.fullname" -}}
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

{{- define "sigma0.operatorName" -}}
{{- printf "%s-operator" (include "sigma0.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sigma0.cronjobName" -}}
{{- printf "%s-cycle" (include "sigma0.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object; selector labels pick the operator pod. */}}
{{- define "sigma0.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/name: {{ include "sigma0.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sigma0
{{- end -}}

{{- define "sigma0.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sigma0.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sigma0.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{/* The namespaces that get the NetworkPolicy and the artifacts claim, as a list. */}}
{{- define "sigma0.cycleNamespaces" -}}
{{- $namespaces := .Values.cycleNamespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{/* The claim stage pods mount when a cycle names no artifacts location. */}}
{{- define "sigma0.artifactsClaim" -}}
{{- if eq .Values.artifacts.mode "existingClaim" -}}
{{- .Values.artifacts.existingClaim -}}
{{- else -}}
{{- .Values.artifacts.pvc.name -}}
{{- end -}}
{{- end -}}

{{/* The values that only make sense together; the schema checks each one alone. */}}
{{- define "sigma0.check" -}}
{{- if and (eq .Values.artifacts.mode "existingClaim") (not .Values.artifacts.existingClaim) -}}
{{- fail "artifacts.mode is existingClaim: set artifacts.existingClaim to the claim's name" -}}
{{- end -}}
{{- if and (eq .Values.artifacts.mode "s3") (or (not .Values.artifacts.s3.uri) (not .Values.artifacts.s3.credentialsSecret)) -}}
{{- fail "artifacts.mode is s3: set artifacts.s3.uri (s3://bucket/prefix) and artifacts.s3.credentialsSecret" -}}
{{- end -}}
{{- if and (eq .Values.artifacts.mode "s3") .Values.networkPolicy.create (not .Values.artifacts.s3.egress) -}}
{{- fail "artifacts.mode is s3 and networkPolicy.create: list the object store in artifacts.s3.egress, or the deny-all policy keeps stage pods from reaching it" -}}
{{- end -}}
{{- if and (not .Values.dashboard.enabled) (or .Values.dashboard.ingress.enabled .Values.dashboard.artifactsClaim) -}}
{{- fail "dashboard.ingress.enabled and dashboard.artifactsClaim need dashboard.enabled" -}}
{{- end -}}
{{- if and .Values.dashboard.ingress.enabled (not .Values.dashboard.service) -}}
{{- fail "dashboard.ingress.enabled needs dashboard.service" -}}
{{- end -}}
{{- if and .Values.cronjob.enabled .Values.watchNamespaces (not (has .Release.Namespace .Values.watchNamespaces)) -}}
{{- fail (printf "cronjob.enabled: its cycles are created in the release namespace %s, which watchNamespaces %v leaves unwatched" .Release.Namespace .Values.watchNamespaces) -}}
{{- end -}}
{{- end -}}

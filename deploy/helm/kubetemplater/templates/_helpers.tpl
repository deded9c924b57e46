{{/*
Names, labels, images, security contexts and the settings every component shares.
Helpers that concern one component take (list $ "<component>"), component being
"coordinator", "worker" or "webhook".
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kubetemplater.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, else the release name when it contains the chart
name, else "<release>-<chart>". Release "kubetemplater" gives the binaries' default names.
*/}}
{{- define "kubetemplater.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "kubetemplater.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fullname cut to 50 characters, so that every name made from it with a suffix (the longest is
"-coordinator", 12) stays within 63 and the names stay distinct.
*/}}
{{- define "kubetemplater.prefix" -}}
{{- include "kubetemplater.fullname" . | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/* Name of a component's objects (Deployment, Service, ServiceAccount, RBAC): <fullname>-<component>. */}}
{{- define "kubetemplater.componentName" -}}
{{- printf "%s-%s" (include "kubetemplater.prefix" (index . 0)) (index . 1) }}
{{- end }}

{{/* Labels that select a component's pods. */}}
{{- define "kubetemplater.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "kubetemplater.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Labels of a component's objects without app.kubernetes.io/managed-by: the webhook configurations
carry these only, because the webhook (server-side apply, field manager kubetemplater-webhook)
sets app.kubernetes.io/managed-by on them itself and the two writers would take turns.
*/}}
{{- define "kubetemplater.baseLabels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "kubetemplater.chart" $root }}
{{ include "kubetemplater.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubetemplater
{{- end }}

{{/* Labels of a component's objects. */}}
{{- define "kubetemplater.labels" -}}
{{ include "kubetemplater.baseLabels" . }}
app.kubernetes.io/managed-by: {{ (index . 0).Release.Service }}
{{- end }}

{{/* Image reference of a component: [<registry>/]<repository>:<tag>. */}}
{{- define "kubetemplater.image" -}}
{{- $root := index . 0 }}
{{- $values := index $root.Values (index . 1) }}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag }}
{{- if $root.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" $values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Object names the binaries are told through flags. */}}
{{- define "kubetemplater.coordinatorServiceName" -}}
{{ include "kubetemplater.componentName" (list . "coordinator") }}
{{- end }}

{{- define "kubetemplater.webhookServiceName" -}}
{{ include "kubetemplater.componentName" (list . "webhook") }}
{{- end }}

{{- define "kubetemplater.bucketMapName" -}}
{{- printf "%s-bucket-map" (include "kubetemplater.prefix" .) }}
{{- end }}

{{- define "kubetemplater.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "kubetemplater.prefix" .) }}
{{- end }}

{{- define "kubetemplater.validatingConfigName" -}}
{{- printf "%s-validating" (include "kubetemplater.prefix" .) }}
{{- end }}

{{- define "kubetemplater.mutatingConfigName" -}}
{{- printf "%s-mutating" (include "kubetemplater.prefix" .) }}
{{- end }}

{{/*
The worker's --coordinator-addr: the coordinator Service, in front of every replica (ADR 0008).
TLS only; the worker checks the name kubetemplater-coordinator.<namespace>.svc whatever it dials.
*/}}
{{- define "kubetemplater.coordinatorURL" -}}
{{- printf "https://%s.%s.svc:%v" (include "kubetemplater.coordinatorServiceName" .) .Release.Namespace .Values.coordinator.grpcPort }}
{{- end }}

{{/*
The Secret in which the coordinators keep their self-managed CA and serving certificate
(--tls-secret): coordinator.tls.secretName, else <fullname>-coordinator-tls.
*/}}
{{- define "kubetemplater.coordinatorTLSSecretName" -}}
{{- default (printf "%s-tls" (include "kubetemplater.componentName" (list . "coordinator"))) .Values.coordinator.tls.secretName }}
{{- end }}

{{/*
The ConfigMap in which every coordinator replica publishes its CA bundle (key ca.crt) for workers
and ktctl. A fixed name, like the leader Lease: the binaries do not take it as a flag.
*/}}
{{- define "kubetemplater.coordinatorCAConfigMapName" -}}
kubetemplater-coordinator-ca
{{- end }}

{{/* Where a supplied certificate (coordinator.tls.existingSecret, worker.tls.volume) is mounted. */}}
{{- define "kubetemplater.tlsMountPath" -}}
/etc/kubetemplater/tls
{{- end }}

{{/* Checks webhook.certificate.mode; prints "true" when it is "selfManaged". */}}
{{- define "kubetemplater.webhookSelfManaged" -}}
{{- $mode := .Values.webhook.certificate.mode }}
{{- if eq $mode "selfManaged" }}
{{- "true" }}
{{- else if eq $mode "provided" }}
{{- if not .Values.webhook.certificate.provided.secretName }}
{{- fail "webhook.certificate.provided.secretName is required with webhook.certificate.mode=provided" }}
{{- end }}
{{- else }}
{{- fail (printf "webhook.certificate.mode must be selfManaged or provided, not %q" $mode) }}
{{- end }}
{{- end }}

{{/*
Prints "true" when the webhook writes its own configurations (--register): always with a
self-managed certificate; with a provided one unless cert-manager's CA injector does it.
*/}}
{{- define "kubetemplater.webhookRegisters" -}}
{{- if or (include "kubetemplater.webhookSelfManaged" .) (not .Values.webhook.certificate.provided.certManagerCertificate) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/* failurePolicy as Kubernetes spells it, checked. */}}
{{- define "kubetemplater.failurePolicy" -}}
{{- $policy := .Values.webhook.failurePolicy }}
{{- if not (has $policy (list "Fail" "Ignore")) }}
{{- fail (printf "webhook.failurePolicy must be Fail or Ignore, not %q" $policy) }}
{{- end }}
{{- $policy }}
{{- end }}

{{/* timeoutSeconds, checked against the API server's range. */}}
{{- define "kubetemplater.timeoutSeconds" -}}
{{- $timeout := int .Values.webhook.timeoutSeconds }}
{{- if or (lt $timeout 1) (gt $timeout 30) }}
{{- fail (printf "webhook.timeoutSeconds must be between 1 and 30, not %d" $timeout) }}
{{- end }}
{{- $timeout }}
{{- end }}

{{/*
The Restricted Pod Security Standard, for every pod: non-root (the distroless "nonroot" user
65532), RuntimeDefault seccomp.
*/}}
{{- define "kubetemplater.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* ... and for every container: no privilege escalation, no capabilities, read-only root. */}}
{{- define "kubetemplater.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Environment every container gets: the pod's name and namespace (for the trace resource), logging
(KT_LOG_FORMAT, KT_LOG) and, when an OTLP endpoint is set, trace export (KT_OTLP_ENDPOINT and the
standard OTEL_* variables the telemetry crate reads).
*/}}
{{- define "kubetemplater.commonEnv" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: KT_LOG_FORMAT
  value: {{ $root.Values.logging.format | quote }}
- name: KT_LOG
  value: {{ $root.Values.logging.level | quote }}
{{- with $root.Values.telemetry.otlp }}
{{- if .endpoint }}
- name: KT_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ index .serviceNames $component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
{{- if .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplerArg | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Liveness and readiness on the admin port. */}}
{{- define "kubetemplater.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* podAntiAffinity of a component from <component>.podAntiAffinity; empty for "none". */}}
{{- define "kubetemplater.podAntiAffinity" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $mode := (index $root.Values $component).podAntiAffinity }}
{{- if eq $mode "preferred" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "kubetemplater.selectorLabels" . | nindent 12 }}
{{- else if eq $mode "required" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "kubetemplater.selectorLabels" . | nindent 10 }}
{{- else if ne $mode "none" }}
{{- fail (printf "%s.podAntiAffinity must be preferred, required or none, not %q" $component $mode) }}
{{- end }}
{{- end }}

{{/* Scheduling of a component's pods: affinity, nodeSelector, tolerations. */}}
{{- define "kubetemplater.scheduling" -}}
{{- $root := index . 0 }}
{{- $values := index $root.Values (index . 1) }}
{{- with include "kubetemplater.podAntiAffinity" . | trim }}
affinity:
  {{- . | nindent 2 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pod template's metadata of a component. */}}
{{- define "kubetemplater.podMetadata" -}}
{{- $root := index . 0 }}
{{- $values := index $root.Values (index . 1) -}}
labels:
  {{- include "kubetemplater.labels" . | nindent 2 }}
{{- with $values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Egress of a component's NetworkPolicy when networkPolicy.egress.restrict is on. */}}
{{- define "kubetemplater.egress" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $egress := $root.Values.networkPolicy.egress }}
{{- if not $egress.rules }}
{{- fail "networkPolicy.egress.restrict needs networkPolicy.egress.rules that allow at least the API server" }}
{{- end }}
egress:
  # DNS.
  - ports:
      - port: 53
        protocol: UDP
      - port: 53
        protocol: TCP
  {{- if eq $component "worker" }}
  # The session with the coordinator leader.
  - to:
      - podSelector:
          matchLabels:
            {{- include "kubetemplater.selectorLabels" (list $root "coordinator") | nindent 12 }}
    ports:
      - port: {{ $root.Values.coordinator.grpcPort }}
        protocol: TCP
  {{- end }}
  {{- toYaml $egress.rules | nindent 2 }}
  {{- if eq $component "coordinator" }}
  {{- with $egress.coordinatorRules }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- end }}
{{- end }}

{{/*
The webhook configurations' metadata. Without app.kubernetes.io/managed-by (see baseLabels).
With cert-manager's CA injector the annotation tells it which Certificate's CA goes into caBundle;
otherwise the webhook writes caBundle itself, so the chart never renders one (a Helm upgrade
leaves the field alone).
*/}}
{{- define "kubetemplater.webhookConfigurationMetadata" -}}
{{- $root := index . 0 -}}
name: {{ index . 1 }}
labels:
  {{- include "kubetemplater.baseLabels" (list $root "webhook") | nindent 2 }}
{{- if not (include "kubetemplater.webhookRegisters" $root) }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" $root.Release.Namespace $root.Values.webhook.certificate.provided.certManagerCertificate | quote }}
{{- end }}
{{- end }}

{{/*
What every webhook entry shares, exactly as the webhook registers it (webhook/src/registration.rs):
the Service on port 443 and the entry's path, failurePolicy, sideEffects None, v1 reviews,
timeoutSeconds, matchPolicy Equivalent, and the namespaceSelector that skips namespaces labelled
kubetemplater.io/admission=disabled. Call with (list $ "<path>").
*/}}
{{- define "kubetemplater.webhookEntry" -}}
{{- $root := index . 0 -}}
clientConfig:
  service:
    namespace: {{ $root.Release.Namespace }}
    name: {{ include "kubetemplater.webhookServiceName" $root }}
    path: {{ index . 1 }}
    port: 443
failurePolicy: {{ include "kubetemplater.failurePolicy" $root }}
sideEffects: None
admissionReviewVersions: ["v1"]
timeoutSeconds: {{ include "kubetemplater.timeoutSeconds" $root }}
matchPolicy: Equivalent
namespaceSelector:
  matchExpressions:
    - key: kubetemplater.io/admission
      operator: NotIn
      values: ["disabled"]
{{- end }}

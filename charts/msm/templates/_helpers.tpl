{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "msm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every resource name. Release "msm" gives "msm" (so msm-control-plane, ...);
release "edge" gives "edge-msm". Truncated so that "<prefix>-control-plane" stays a DNS label.
*/}}
{{- define "msm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "msm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Names of the components' objects.
*/}}
{{- define "msm.controlPlane.name" -}}{{ include "msm.fullname" . }}-control-plane{{- end -}}
{{- define "msm.proxy.name" -}}{{ include "msm.fullname" . }}-proxy{{- end -}}
{{- define "msm.webhook.name" -}}{{ include "msm.fullname" . }}-webhook{{- end -}}
{{- define "msm.webhook.tlsSecretName" -}}{{ include "msm.fullname" . }}-webhook-tls{{- end -}}
{{- define "msm.cni.name" -}}{{ include "msm.fullname" . }}-cni{{- end -}}

{{/*
Address of the control plane's gRPC service, as stubs and proxies dial it.
*/}}
{{- define "msm.controlPlane.address" -}}
{{- printf "%s.%s.svc:%d" (include "msm.controlPlane.name" .) .Release.Namespace (int .Values.controlPlane.ports.grpc) -}}
{{- end -}}

{{/*
Address of the control plane's certificate bootstrap port (IssueCertificate over server-only TLS).
*/}}
{{- define "msm.controlPlane.bootstrapAddress" -}}
{{- printf "%s.%s.svc:%d" (include "msm.controlPlane.name" .) .Release.Namespace (int .Values.controlPlane.ports.bootstrap) -}}
{{- end -}}

{{/*
Common labels. Call with (dict "ctx" $ "component" "proxy").
*/}}
{{- define "msm.labels" -}}
helm.sh/chart: {{ include "msm.chart" .ctx }}
{{ include "msm.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: msm
{{- end -}}

{{/*
Selector labels (immutable in Deployments and DaemonSets: never add to them).
*/}}
{{- define "msm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The msm image reference; the stub the webhook injects uses it too.
*/}}
{{- define "msm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "msm.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The stub sidecar's RTSP port and UID. The webhook injects the stub with these (fixed in
webhook/review.py: STUB_PORT, STUB_UID); the CNI plugin must redirect to the same port and
exempt the same UID, so the chart passes them to the installer from here.
*/}}
{{- define "msm.stub.port" -}}8554{{- end -}}
{{- define "msm.stub.uid" -}}1337{{- end -}}

{{/*
The proxy's group: its podSecurityContext.runAsGroup (else its runAsUser, else 10001). The proxy runs
with it, the media directory is chowned to it, and the webhook adds it to memif pods' supplementalGroups.
*/}}
{{- define "msm.proxy.gid" -}}
{{- $psc := .Values.proxy.podSecurityContext | default dict -}}
{{- int (dig "runAsGroup" (dig "runAsUser" 10001 $psc) $psc) -}}
{{- end -}}

{{/*
Namespaces the mesh never touches: webhook.excludeNamespaces plus the release's own.
*/}}
{{- define "msm.excludedNamespaces" -}}
{{- concat .Values.webhook.excludeNamespaces (list .Release.Namespace) | uniq | join "," -}}
{{- end -}}

{{/*
The node this pod runs on, and its IP, from the Downward API.
*/}}
{{- define "msm.nodeEnv" -}}
- name: MSM_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: MSM_HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end -}}

{{/*
Scheduling fields shared by every pod spec. Call with a component's values.
*/}}
{{- define "msm.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/*
The webhook's self-signed TLS material as JSON: {"caCert", "tlsCert", "tlsKey"}, base64.
Reuses the Secret already in the cluster when there is one (lookup; empty offline, e.g. in
"helm template"), so upgrades keep the same certificate. Otherwise generates a CA and a
serving certificate for the webhook Service's DNS names. The result is cached in .Values for
the rest of this render so that the Secret, the caBundle and the Deployment's checksum all
see the same certificate (every include would otherwise generate a new one).
*/}}
{{- define "msm.webhook.selfSignedTLS" -}}
{{- if not (hasKey .Values "__msmWebhookTLS") -}}
{{- $secretName := include "msm.webhook.tlsSecretName" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- $data := dict -}}
{{- if and $existing $existing.data -}}
{{- $data = $existing.data -}}
{{- end -}}
{{- $tls := dict -}}
{{- if and (hasKey $data "ca.crt") (hasKey $data "tls.crt") (hasKey $data "tls.key") -}}
{{- $tls = dict "caCert" (index $data "ca.crt") "tlsCert" (index $data "tls.crt") "tlsKey" (index $data "tls.key") -}}
{{- else -}}
{{- $svc := include "msm.webhook.name" . -}}
{{- $ns := .Release.Namespace -}}
{{- $days := int .Values.webhook.selfSigned.validityDays -}}
{{- $dnsNames := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $ca := genCA (printf "%s-ca" $svc) $days -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dnsNames $days $ca -}}
{{- $tls = dict "caCert" ($ca.Cert | b64enc) "tlsCert" ($cert.Cert | b64enc) "tlsKey" ($cert.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "__msmWebhookTLS" $tls -}}
{{- end -}}
{{- toJson (get .Values "__msmWebhookTLS") -}}
{{- end -}}

{{/*
Fail early on values that would render a broken mesh.
*/}}
{{- define "msm.validate" -}}
{{- if not (regexMatch "^[0-9]+-[0-9]+$" (toString .Values.portRange)) -}}
{{- fail (printf "portRange must be \"LOW-HIGH\", got %q" (toString .Values.portRange)) -}}
{{- end -}}
{{- $range := splitList "-" (toString .Values.portRange) -}}
{{- $low := atoi (first $range) -}}
{{- $high := atoi (last $range) -}}
{{- if or (lt $low 1024) (gt $high 65535) (ge $low $high) -}}
{{- fail (printf "portRange %s must lie within 1024-65535 with LOW < HIGH" .Values.portRange) -}}
{{- end -}}
{{- if not (has .Values.webhook.failurePolicy (list "Ignore" "Fail")) -}}
{{- fail (printf "webhook.failurePolicy must be Ignore or Fail, got %q" (toString .Values.webhook.failurePolicy)) -}}
{{- end -}}
{{- if gt (int .Values.controlPlane.replicas) 1 -}}
{{- fail (printf "controlPlane.replicas must be 0 or 1, got %v: the control plane keeps its state in memory in one process (no shared store, no leader election yet); a second replica would split stubs and streams between two control planes" .Values.controlPlane.replicas) -}}
{{- end -}}
{{- if and .Values.webhook.enabled (not .Values.controlPlane.enabled) -}}
{{- fail "webhook.enabled needs controlPlane.enabled: injected stubs connect to the control plane" -}}
{{- end -}}
{{- end -}}

{{- define "msm.meshCA.secretName" -}}{{ include "msm.fullname" . }}-mesh-ca{{- end -}}
{{- define "msm.trustBundle.name" -}}{{ include "msm.fullname" . }}-trust-bundle{{- end -}}

{{/*
The mesh CA, as JSON {"cert": b64, "key": b64}: an ECDSA P-256 CA made by Helm on first
install (genPrivateKey + genCAWithKey), kept across upgrades by reading back the Secret
(lookup; empty offline, e.g. in `helm template`, which then makes a fresh one). Computed
once per render so the Secret and the trust-bundle ConfigMap carry the same CA.
*/}}
{{- define "msm.meshCA" -}}
{{- if not (hasKey .Values "__msmMeshCA") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "msm.meshCA.secretName" .) -}}
{{- $data := dict -}}
{{- if and $existing $existing.data -}}
{{- $data = $existing.data -}}
{{- end -}}
{{- $ca := dict -}}
{{- if and (hasKey $data "ca-cert.pem") (hasKey $data "ca-key.pem") -}}
{{- $ca = dict "cert" (index $data "ca-cert.pem") "key" (index $data "ca-key.pem") -}}
{{- else -}}
{{- $key := genPrivateKey "ecdsa" -}}
{{- $gen := genCAWithKey (printf "msm mesh CA (%s)" .Values.mesh.trustDomain) (int .Values.mesh.ca.validityDays) $key -}}
{{- $ca = dict "cert" ($gen.Cert | b64enc) "key" ($gen.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "__msmMeshCA" $ca -}}
{{- end -}}
{{- toJson (get .Values "__msmMeshCA") -}}
{{- end -}}

{{/*
The projected service-account token and trust bundle volumes of a workload that gets its
certificate from the control plane (the proxy; the webhook does the same for stubs).
*/}}
{{- define "msm.identityVolumes" -}}
- name: msm-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.mesh.tokenAudience | quote }}
          expirationSeconds: {{ int .Values.mesh.tokenExpirationSeconds }}
          path: token
- name: msm-trust
  configMap:
    name: {{ include "msm.trustBundle.name" . }}
- name: msm-tls
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end -}}
{{- define "msm.identityMounts" -}}
- name: msm-token
  mountPath: /var/run/secrets/msm/token
  readOnly: true
- name: msm-trust
  mountPath: /etc/msm/trust
  readOnly: true
- name: msm-tls
  mountPath: /var/run/secrets/msm/tls
{{- end -}}
{{- define "msm.identityArgs" -}}
{{- if .Values.mesh.insecure }}
- --insecure
{{- else }}
- --token-file
- /var/run/secrets/msm/token/token
- --trust-bundle
- /etc/msm/trust/ca.pem
- --bootstrap
- {{ include "msm.controlPlane.bootstrapAddress" . }}
- --tls-dir
- /var/run/secrets/msm/tls
- --trust-domain
- {{ .Values.mesh.trustDomain | quote }}
{{- end }}
{{- end -}}

"""AdmissionReview in, AdmissionReview (or an error Status) out: the whole decision, as pure functions.

:func:`review` takes the raw request body and returns ``(http_status, json_body)``; the aiohttp
handler in :mod:`msm.webhook.server` only reads the body and writes the answer. Nothing here does I/O.

The rules, in the order they are applied:

1. The body must be at most :data:`MAX_REVIEW_BYTES` (1 MiB) of JSON holding an
   ``admission.k8s.io/v1`` ``AdmissionReview`` whose ``request`` has a ``uid``, a ``kind``
   (group/version/kind) and an ``operation``. Anything else (garbage, an empty body, no request,
   ``v1beta1``, a ``kind`` other than ``AdmissionReview``, a field of the wrong type) is the
   sender's fault: **400** with a ``v1 Status`` naming the problem, never a 500.
2. A well-formed review of anything but a Pod CREATE (``request.kind`` is not core ``v1 Pod``,
   for example an ``apps/v1 Deployment``; an UPDATE; a subresource) is **200, allowed, no
   patch**. Such a review is valid admission traffic that only a too-wide webhook rule sends us;
   answering 400 would make the API server apply the failure policy and, with ``Fail``, block
   every such object in the cluster. So "wrong kind" means *400 when the review is broken,
   allowed-untouched when it is merely not ours*. A review that says Pod but carries some other
   object (``object.kind: Deployment``), or a Pod CREATE without an object, is broken: 400.
3. A Pod is injected when its annotation ``sidecar.mediastreamingmesh.io/inject`` is ``"true"``
   (case-insensitive) or, if that annotation is absent, its label of the same name is. It is
   never injected in ``kube-system`` or the mesh's own namespace, nor when it is already
   injected (annotation ``sidecar.mediastreamingmesh.io/status: injected``, or a container or
   init container named ``msm-stub``), so a reinvoked webhook adds nothing twice.
4. An injected Pod gets a base64 ``JSONPatch`` that appends the stub container and sets the status annotation (a
   Pod annotated ``media.mediastreamingmesh.io/memif`` also gets the proxy's socket and group: ``webhook/media.py``).
   Every allowed response says why in ``auditAnnotations["injection"]`` (audit log: ``<webhook name>/injection``).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, cast

from msm.runtime.hostport import format_host_port, parse_host_port
from msm.sdk.errors import MsmError
from msm.webhook.errors import ConfigError, ReviewError
from msm.webhook.media import MEDIA_GID, media_patch

# A real CREATE review carries the Pod once (oldObject is null) and Pods are a few KiB: the API server caps
# all annotations at 256 KiB and etcd refuses objects over 1.5 MiB by default. 1 MiB is 100x a large Pod yet
# bounds what one request costs us: json.loads builds Python objects about ten times the size of the text,
# and the webhook runs with a small memory limit. A bigger body is refused with 400 before it is parsed.
MAX_REVIEW_BYTES = 1 << 20

ADMISSION_API_VERSION = "admission.k8s.io/v1"
INJECT_KEY = "sidecar.mediastreamingmesh.io/inject"
STATUS_KEY = "sidecar.mediastreamingmesh.io/status"
INJECTED = "injected"
STUB_NAME = "msm-stub"
STUB_PORT = 8554
STUB_PORT_NAME = "rtsp-stub"
STUB_UID = 1337  # the redirect rules exempt this UID, so the stub's own connections go out as-is
DEFAULT_CONTROL_PLANE = "msm-control-plane.msm-system.svc:9000"
BOOTSTRAP_PORT = 9002   # the control plane's certificate bootstrap port (server TLS, IssueCertificate only)
DEFAULT_MESH_NAMESPACE = "msm-system"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_TOKEN_AUDIENCE = "msm"
DEFAULT_TOKEN_EXPIRATION = 600   # seconds: Kubernetes' minimum; the kubelet renews at 80 %
# Where the injected stub finds its projected token and keeps its certificate.
TOKEN_VOLUME = "msm-token"
TOKEN_DIR = "/var/run/secrets/msm/token"
TLS_VOLUME = "msm-tls"
TLS_DIR = "/var/run/secrets/msm/tls"
MAX_TRUST_BUNDLE = 64 * 1024   # a few CA certificates; it travels in every injected pod spec
SYSTEM_NAMESPACE = "kube-system"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


# -- the JSON at the boundary (admission.k8s.io/v1 and the core/v1 Pod fields we read) -------------
class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]


class Container(TypedDict, total=False):
    name: str
    image: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]]
    ports: list[dict[str, Any]]
    readinessProbe: dict[str, Any]
    resources: dict[str, dict[str, str]]
    securityContext: dict[str, Any]
    volumeMounts: list[dict[str, Any]]


class PodSpec(TypedDict, total=False):
    containers: list[Container]
    initContainers: list[Container]
    volumes: list[dict[str, Any]]
    nodeName: str


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: dict[str, Any]


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    resource: NotRequired[GroupVersionResource]
    subResource: NotRequired[str]
    requestKind: NotRequired[GroupVersionKind]
    requestResource: NotRequired[GroupVersionResource]
    requestSubResource: NotRequired[str]
    name: NotRequired[str]
    namespace: NotRequired[str]
    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    userInfo: NotRequired[UserInfo]
    object: NotRequired[dict[str, Any] | None]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]
    options: NotRequired[dict[str, Any] | None]


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]  # base64 of the JSON Patch document
    auditAnnotations: NotRequired[dict[str, str]]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    request: NotRequired[AdmissionRequest]
    response: NotRequired[AdmissionResponse]


class Status(TypedDict):
    """A ``v1 Status``: what Kubernetes servers answer with when they refuse a request."""

    apiVersion: Literal["v1"]
    kind: Literal["Status"]
    status: Literal["Failure"]
    message: str
    reason: str
    code: int


class JsonPatchOp(TypedDict):
    op: Literal["add"]
    path: str
    value: Any


# -- configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class InjectConfig:
    """What the injected stub looks like and which namespaces are off limits."""

    stub_image: str
    control_plane: str = DEFAULT_CONTROL_PLANE
    bootstrap: str = ""   # HOST:PORT of the bootstrap port; "" is the control plane's host on BOOTSTRAP_PORT
    mesh_namespace: str = DEFAULT_MESH_NAMESPACE
    # The stub proves its pod with a projected token and checks the control plane with the mesh CA
    # (trust_bundle_pem, PEM text in the stub's environment: a ConfigMap cannot cross namespaces).
    # insecure_stubs: plaintext, said explicitly. media_gid: the proxy's group, for memif pods.
    trust_bundle_pem: str = ""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    token_audience: str = DEFAULT_TOKEN_AUDIENCE
    token_expiration: int = DEFAULT_TOKEN_EXPIRATION
    insecure_stubs: bool = False
    media_gid: int = MEDIA_GID

    def __post_init__(self) -> None:
        if not self.stub_image or self.stub_image != self.stub_image.strip() or " " in self.stub_image:
            raise ConfigError(f"stub image must be an image reference, got {self.stub_image!r}")
        address = parse_host_port(self.control_plane, what="control plane")
        if address.port == 0:
            raise ConfigError(f"control plane must be HOST:PORT, got {self.control_plane!r} (port 0)")
        # A new stub has no certificate for the main port yet: it asks on the bootstrap port.
        object.__setattr__(self, "bootstrap", self.bootstrap or format_host_port(address.host, BOOTSTRAP_PORT))
        if parse_host_port(self.bootstrap, what="bootstrap address").port == 0:
            raise ConfigError(f"bootstrap address must be HOST:PORT, got {self.bootstrap!r} (port 0)")
        if not _DNS_LABEL.fullmatch(self.mesh_namespace):
            raise ConfigError(f"mesh namespace must be a namespace name, got {self.mesh_namespace!r}")
        if len(self.trust_bundle_pem) > MAX_TRUST_BUNDLE or (
                self.trust_bundle_pem and "-----BEGIN CERTIFICATE-----" not in self.trust_bundle_pem):
            raise ConfigError("the trust bundle must be PEM certificates (at most 64 KiB)")
        if not 600 <= self.token_expiration <= 86400:
            raise ConfigError(f"token expiration must be 600-86400 seconds, got {self.token_expiration}")
        if not self.token_audience or not self.token_audience.isprintable() or " " in self.token_audience:
            raise ConfigError(f"bad token audience {self.token_audience!r}")


# -- the pure function ---------------------------------------------------------------------------------
def review(body: bytes, config: InjectConfig) -> tuple[int, AdmissionReview | Status]:
    """Answer one AdmissionReview: ``(200, review with response)`` or ``(400, Status)``."""
    try:
        request = parse_review(body)
        patch, reason = decide(request, config)
    except ReviewError as exc:
        return rejection(exc)
    response: AdmissionResponse = {"uid": request["uid"], "allowed": True, "auditAnnotations": {"injection": reason}}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode("ascii")
    return 200, {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


# HTTP status -> the v1 Status ``reason`` Kubernetes servers give with it.
_STATUS_REASONS = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 413: "RequestEntityTooLarge",
                   429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


def rejection(exc: BaseException) -> tuple[int, Status]:
    """The HTTP status and ``v1 Status`` body that answer ``exc``: the webhook's one HTTP error boundary.

    An :class:`~msm.sdk.errors.MsmError` answers with its ``http_status`` and reason (a bad review
    is 400); anything else is a bug of ours and answers 500 without details.
    """
    if isinstance(exc, MsmError):
        code, message = exc.http_status, exc.reason
    else:
        code, message = 500, "internal error"
    reason = _STATUS_REASONS.get(code, "BadRequest" if code < 500 else "InternalError")
    return code, {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                  "message": message, "reason": reason, "code": code}


def check_size(size: int) -> None:
    """Refuse a body over :data:`MAX_REVIEW_BYTES` (called before reading it, and by :func:`parse_review`)."""
    if size > MAX_REVIEW_BYTES:
        raise ReviewError(f"AdmissionReview too large: {size} bytes, the limit is {MAX_REVIEW_BYTES}")


def parse_review(body: bytes) -> AdmissionRequest:
    """Check the shape of an AdmissionReview v1 and return its request; :class:`ReviewError` if broken."""
    check_size(len(body))
    if not body.strip():
        raise ReviewError("empty body: expected an admission.k8s.io/v1 AdmissionReview")
    try:
        document = json.loads(body)
    except RecursionError as exc:
        raise ReviewError("body is not usable JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits in an integer
        raise ReviewError(f"body is not JSON: {exc}") from exc
    top = _object(document, "body")
    if top.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind must be AdmissionReview, got {_show(top.get('kind'))}")
    if top.get("apiVersion") != ADMISSION_API_VERSION:
        raise ReviewError(f"apiVersion must be {ADMISSION_API_VERSION}, got {_show(top.get('apiVersion'))}")
    if top.get("request") is None:
        raise ReviewError("AdmissionReview has no request")
    request = _object(top["request"], "request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError(f"request.uid must be a non-empty string, got {_show(uid)}")
    kind = _object(request.get("kind"), "request.kind")
    for field in ("group", "version", "kind"):
        _string(kind.get(field), f"request.kind.{field}")
    _string(request.get("operation"), "request.operation")
    for field in ("namespace", "name", "subResource"):
        if request.get(field) is not None:
            _string(request[field], f"request.{field}")
    return cast(AdmissionRequest, request)


def decide(request: AdmissionRequest, config: InjectConfig) -> tuple[list[JsonPatchOp], str]:
    """The patch for this request (empty for none) and why, for the audit annotation."""
    kind = request["kind"]
    what = f"{kind['group'] + '/' if kind['group'] else ''}{kind['version']} {kind['kind']}"
    if (kind["group"], kind["version"], kind["kind"]) != ("", "v1", "Pod"):
        return [], f"skipped: not a Pod ({what})"
    if request["operation"] != "CREATE" or request.get("subResource"):
        sub = f" {request.get('subResource')}" if request.get("subResource") else ""
        return [], f"skipped: {request['operation']}{sub} (only Pod CREATE is injected)"
    pod = pod_of(request)
    namespace = request.get("namespace") or pod.get("metadata", {}).get("namespace")
    if not namespace:
        raise ReviewError("a Pod review needs request.namespace")
    reason = skip_reason(pod, namespace, config)
    patch = build_patch(pod, config) if reason is None else []
    media, note = media_patch(cast(dict[str, Any], pod), patch, skip=STUB_NAME, gid=config.media_gid)
    return [*patch, *media], (INJECTED if reason is None else f"skipped: {reason}") + note


def pod_of(request: AdmissionRequest) -> Pod:
    """The Pod in a Pod CREATE review, with the fields we read checked; :class:`ReviewError` if broken."""
    if request.get("object") is None:
        raise ReviewError("a Pod CREATE review needs request.object")
    pod = _object(request.get("object"), "request.object")
    if pod.get("kind", "Pod") != "Pod" or pod.get("apiVersion", "v1") != "v1":
        raise ReviewError(f"request.kind is v1 Pod but request.object is "
                          f"{_show(pod.get('apiVersion'))} {_show(pod.get('kind'))}")
    metadata = _object(pod.get("metadata", {}), "request.object.metadata")
    for field in ("name", "generateName", "namespace"):
        if metadata.get(field) is not None:
            _string(metadata[field], f"request.object.metadata.{field}")
    for field in ("labels", "annotations"):
        if metadata.get(field) is not None:
            _string_map(metadata[field], f"request.object.metadata.{field}")
    spec = _object(pod.get("spec"), "request.object.spec")
    for field in ("containers", "initContainers"):
        containers = spec.get(field)
        if containers is None and field == "initContainers":
            continue
        if not isinstance(containers, list):
            raise ReviewError(f"request.object.spec.{field} must be a list, got {_show(containers)}")
        for index, container in enumerate(containers):
            _object(container, f"request.object.spec.{field}[{index}]")
    return cast(Pod, pod)


def wants_injection(pod: Pod) -> bool:
    """The inject annotation, or when it is absent the inject label, says ``"true"``."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    value = annotations[INJECT_KEY] if INJECT_KEY in annotations else (metadata.get("labels") or {}).get(INJECT_KEY)
    return isinstance(value, str) and value.strip().lower() == "true"


def is_injected(pod: Pod) -> bool:
    """The status annotation says injected, or a container or init container is already the stub."""
    metadata = pod.get("metadata") or {}
    if (metadata.get("annotations") or {}).get(STATUS_KEY) == INJECTED:
        return True
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    return any(container.get("name") == STUB_NAME for container in containers)


def skip_reason(pod: Pod, namespace: str, config: InjectConfig) -> str | None:
    """Why this Pod gets no stub, or None when it gets one."""
    if namespace == SYSTEM_NAMESPACE:
        return f"namespace {namespace} is never injected"
    if namespace == config.mesh_namespace:
        return f"namespace {namespace} is the mesh's own"
    if not wants_injection(pod):
        return f"no {INJECT_KEY}: \"true\" annotation or label"
    if is_injected(pod):
        return "already injected"
    return None


def build_patch(pod: Pod, config: InjectConfig) -> list[JsonPatchOp]:
    """JSON Patch (RFC 6902) operations that add the stub container and the status annotation."""
    ops: list[JsonPatchOp] = []
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        ops.append(_add("/metadata", {"annotations": {STATUS_KEY: INJECTED}}))
    elif not isinstance(metadata.get("annotations"), dict):
        # No map (or null) to add a key to: "add" the whole map.
        ops.append(_add("/metadata/annotations", {STATUS_KEY: INJECTED}))
    else:
        ops.append(_add("/metadata/annotations/" + escape_pointer(STATUS_KEY), INJECTED))
    spec = pod.get("spec")
    volumes = stub_volumes(config)
    if not isinstance(spec, dict):
        ops.append(_add("/spec", {**({"volumes": volumes} if volumes else {}), "containers": [stub_container(config)]}))
        return ops
    # The stub's volumes first and the stub itself last (the patch ends with the container).
    if volumes and not isinstance(spec.get("volumes"), list):
        ops.append(_add("/spec/volumes", volumes))
    elif volumes:
        existing = {str(v.get("name")) for v in spec.get("volumes") or [] if isinstance(v, dict)}
        clash = existing & {v["name"] for v in volumes}
        if clash:
            raise ReviewError(f"the pod already has a volume named {sorted(clash)[0]!r}, which the stub needs")
        ops.extend(_add("/spec/volumes/-", volume) for volume in volumes)
    if not isinstance(spec.get("containers"), list):
        ops.append(_add("/spec/containers", [stub_container(config)]))
    else:
        # Appended, so the app stays the first container (kubectl logs/exec pick the first one).
        ops.append(_add("/spec/containers/-", stub_container(config)))
    return ops


def stub_volumes(config: InjectConfig) -> list[dict[str, Any]]:
    """The stub's own volumes: its projected token (audience and expiry of the mesh's) and
    an in-memory directory for its key and certificate. The app's containers mount neither."""
    if config.insecure_stubs:
        return []
    return [
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience, "expirationSeconds": config.token_expiration, "path": "token"}}]}},
        {"name": TLS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]


def _stub_tls(config: InjectConfig) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The stub's TLS flags, environment and volume mounts."""
    if config.insecure_stubs:
        return ["--insecure"], [], []
    args = ["--token-file", f"{TOKEN_DIR}/token", "--tls-dir", TLS_DIR, "--trust-domain", config.trust_domain,
            "--bootstrap", config.bootstrap]
    env: list[dict[str, Any]] = [{"name": "MSM_TRUST_BUNDLE", "value": config.trust_bundle_pem}]  # --trust-bundle
    mounts: list[dict[str, Any]] = [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
              {"name": TLS_VOLUME, "mountPath": TLS_DIR}]
    return args, env, mounts


def stub_container(config: InjectConfig) -> Container:
    """The sidecar: RTSP on 8554 (0.0.0.0 is both IPv4 and IPv6) as UID 1337, identity from the Downward API."""
    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    tls_args, tls_env, mounts = _stub_tls(config)
    container: Container = {
        "name": STUB_NAME,
        "image": config.stub_image,
        "command": ["msm-stub"],
        "args": ["--control", "$(MSM_CONTROL_PLANE)", "--listen", f"0.0.0.0:{STUB_PORT}", *tls_args],
        "env": [
            {"name": "MSM_CONTROL_PLANE", "value": config.control_plane},
            {"name": "MSM_POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "MSM_POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "MSM_POD_IP", "valueFrom": field("status.podIP")},
            {"name": "MSM_NODE_NAME", "valueFrom": field("spec.nodeName")},
            *tls_env,
        ],
        "ports": [{"name": STUB_PORT_NAME, "containerPort": STUB_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": STUB_PORT}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "runAsUser": STUB_UID,
            "runAsGroup": STUB_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if mounts:
        container["volumeMounts"] = mounts
    return container


def escape_pointer(token: str) -> str:
    """One JSON Pointer (RFC 6901) reference token: ``~`` becomes ``~0`` and ``/`` becomes ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


# -- helpers --------------------------------------------------------------------------------------------
def _add(path: str, value: Any) -> JsonPatchOp:
    return {"op": "add", "path": path, "value": value}


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReviewError(f"{where} must be a JSON object, got {_show(value)}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ReviewError(f"{where} must be a string, got {_show(value)}")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    mapping = _object(value, where)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise ReviewError(f"{where}[{key!r}] must be a string, got {_show(item)}")
    return mapping


def _show(value: object) -> str:
    """A short description of a JSON value for an error message (never the whole value)."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, bool | int | float):
        return repr(value)
    return "an array" if isinstance(value, list) else "an object"

"""A tiny Kubernetes client: read a kubeconfig, GET one pod.

The plugin is a short-lived process started for every pod, so this is plain
``http.client`` and ``ssl`` rather than a client library. Supported kubeconfig
auth: bearer ``token``/``tokenFile`` and client certificates (files or
``-data``), with the server's CA from ``certificate-authority(-data)`` or
``insecure-skip-tls-verify``. ``exec`` and ``auth-provider`` plugins are refused
with a clear error (the installer never writes them).

The installer writes kubeconfigs as JSON, which is valid YAML, so the common
case never imports PyYAML; a hand-written YAML kubeconfig works too.

Failures are translated here, once: anything transient (connection refused or
reset, timeouts, 5xx, 429) is ``TryAgainLater`` (code 11); a definite answer
that is not a usable pod (404, 401, 403, a certificate the CA does not sign) is
``PodLookupFailed``; an unreadable or malformed kubeconfig is ``InvalidConfig``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .errors import InvalidConfig, PodLookupFailed, TryAgainLater
from .types import Pod

INJECT_KEY = "sidecar.mediastreamingmesh.io/inject"
STATUS_KEY = "sidecar.mediastreamingmesh.io/status"
#: A pod object is a few KiB, big ones (many containers, managedFields) tens of
#: KiB; 4 MiB is the API server's own request limit order of magnitude and keeps
#: a confused server from making us read without bound.
MAX_POD_BYTES = 4 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeConfig:
    """The resolved current context: where the API server is and how to log in."""

    server: str
    ca_file: str = ""
    ca_data: bytes = b""
    insecure: bool = False
    token: str = ""
    cert_file: str = ""
    key_file: str = ""
    cert_data: bytes = b""
    key_data: bytes = b""


def _load_document(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidConfig("cannot read kubeconfig", f"{path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # only for hand-written kubeconfigs; ours are JSON

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidConfig("kubeconfig is not valid YAML", f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidConfig("kubeconfig is not a mapping", path)
    return doc


def _named(doc: dict[str, Any], section: str, name: str, inner: str, path: str) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(inner) or {}
            if isinstance(value, dict):
                return value
    raise InvalidConfig(f"kubeconfig has no {inner} named {name!r}", path)


def _relative(value: str, base: Path) -> str:
    return value if not value or os.path.isabs(value) else str(base / value)


def _b64(value: object, field: str, path: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise InvalidConfig(f"kubeconfig {field} is not base64", path) from exc


def load_kubeconfig(path: str) -> KubeConfig:
    """Read ``path`` and resolve its current context (relative file paths are
    relative to the kubeconfig's directory, as kubectl does)."""
    doc = _load_document(path)
    base = Path(path).resolve().parent
    current = doc.get("current-context")
    contexts = doc.get("contexts") or []
    if not current:
        if len(contexts) != 1:
            raise InvalidConfig("kubeconfig has no current-context", path)
        current = contexts[0].get("name")
    context = _named(doc, "contexts", str(current), "context", path)
    cluster = _named(doc, "clusters", str(context.get("cluster")), "cluster", path)
    user: dict[str, Any] = {}
    if context.get("user"):
        user = _named(doc, "users", str(context["user"]), "user", path)
    if "exec" in user or "auth-provider" in user:
        raise InvalidConfig("unsupported kubeconfig auth", f"{path}: exec and auth-provider users are not supported")

    server = cluster.get("server")
    if not isinstance(server, str) or urllib.parse.urlsplit(server).scheme not in ("http", "https"):
        raise InvalidConfig("kubeconfig cluster has no http(s) server", f"{path}: server={server!r}")

    token = str(user.get("token") or "")
    if not token and user.get("tokenFile"):
        token_path = _relative(str(user["tokenFile"]), base)
        try:
            token = Path(token_path).read_text().strip()
        except OSError as exc:
            raise InvalidConfig("cannot read kubeconfig tokenFile", f"{token_path}: {exc.strerror or exc}") from exc

    return KubeConfig(
        server=server.rstrip("/"),
        ca_file=_relative(str(cluster.get("certificate-authority") or ""), base),
        ca_data=_b64(cluster["certificate-authority-data"], "certificate-authority-data", path)
        if cluster.get("certificate-authority-data")
        else b"",
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=token,
        cert_file=_relative(str(user.get("client-certificate") or ""), base),
        key_file=_relative(str(user.get("client-key") or ""), base),
        cert_data=_b64(user["client-certificate-data"], "client-certificate-data", path)
        if user.get("client-certificate-data")
        else b"",
        key_data=_b64(user["client-key-data"], "client-key-data", path) if user.get("client-key-data") else b"",
    )


@contextlib.contextmanager
def _client_cert_files(config: KubeConfig) -> Iterator[tuple[str, str]]:
    """``ssl`` loads client certificates only from files: write inline data to
    private temporary files for the duration of the request."""
    if not config.cert_data:
        yield config.cert_file, config.key_file
        return
    with tempfile.TemporaryDirectory(prefix="msm-cni-") as tmp:  # mode 0700
        cert = os.path.join(tmp, "client.crt")
        key = os.path.join(tmp, "client.key")
        Path(cert).write_bytes(config.cert_data)
        Path(key).write_bytes(config.key_data or config.cert_data)
        yield cert, key


def _ssl_context(config: KubeConfig, cert: str, key: str) -> ssl.SSLContext:
    try:
        if config.insecure:
            context = ssl._create_unverified_context()  # insecure-skip-tls-verify: the kubeconfig asked for it
        else:
            context = ssl.create_default_context(
                cafile=config.ca_file or None,
                cadata=config.ca_data.decode("ascii", "replace") if config.ca_data else None,
            )
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise InvalidConfig("cannot load kubeconfig certificates", str(exc)) from exc
    return context


def get_pod(config: KubeConfig, namespace: str, name: str, timeout: float) -> Pod:
    """GET /api/v1/namespaces/NAMESPACE/pods/NAME."""
    url = urllib.parse.urlsplit(config.server)
    quoted_ns, quoted_name = urllib.parse.quote(namespace, safe=""), urllib.parse.quote(name, safe="")
    path = f"{url.path}/api/v1/namespaces/{quoted_ns}/pods/{quoted_name}"
    headers = {"Accept": "application/json", "User-Agent": "msm-cni"}
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    where = f"{config.server} (pod {namespace}/{name})"
    with _client_cert_files(config) as (cert, key):
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            context = _ssl_context(config, cert, key)
            conn = http.client.HTTPSConnection(url.hostname or "", url.port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read(MAX_POD_BYTES + 1)
        except ssl.SSLCertVerificationError as exc:
            raise PodLookupFailed("API server certificate not trusted", f"{where}: {exc.verify_message}") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, DNS, bad status line
            raise TryAgainLater("Kubernetes API server unreachable", f"{where}: {exc}") from exc
        finally:
            conn.close()

    status = response.status
    if status >= 500 or status == 429:
        raise TryAgainLater(f"Kubernetes API server answered {status}", where)
    if status != 200:
        reason = {401: "unauthorized (check the kubeconfig token)", 403: "forbidden (RBAC: get pods)"}.get(
            status, response.reason
        )
        raise PodLookupFailed(f"Kubernetes API server answered {status} {reason}", where)
    if len(body) > MAX_POD_BYTES:
        raise PodLookupFailed("pod object too large", f"{where}: more than {MAX_POD_BYTES} bytes")
    try:
        pod = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PodLookupFailed("API server answer is not JSON", f"{where}: {exc}") from exc
    if not isinstance(pod, dict) or pod.get("kind") != "Pod" or not isinstance(pod.get("metadata"), dict):
        raise PodLookupFailed("API server answer is not a Pod", where)
    return cast(Pod, pod)


def is_injected(pod: Pod) -> bool:
    """Does this pod have (or ask for) the msm stub?

    The webhook's ``status: injected`` annotation is decisive. Otherwise the
    ``inject`` annotation decides when present (an explicit ``"false"`` wins over
    the label), and the label of the same name when not.
    """
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    if annotations.get(STATUS_KEY) == "injected":
        return True
    if INJECT_KEY in annotations:
        return str(annotations[INJECT_KEY]).lower() == "true"
    return str(labels.get(INJECT_KEY, "")).lower() == "true"

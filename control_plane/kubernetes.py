"""Resolve ``rtsp://<service>[.<namespace>]:<port>/<path>`` through the Kubernetes API.

Service name or ClusterIP -> Service -> its EndpointSlices -> a ready endpoint:
the pod, its IP and its node. Services and EndpointSlices are listed once and
then *watched*, so resolving never waits on the API server.

Every failure of the API server (unreachable, an HTTP error, a body that is not
what the API reference says) and every unusable kubeconfig is a
:class:`~msm.sdk.errors.KubeError` (re-exported here); a URL no Service answers
is :class:`~msm.sdk.errors.NotFound`.

Who may resolve what: a viewer resolves the Services of its own namespace (its stub's).
A Service opens itself to other namespaces with the annotation
``media.mediastreamingmesh.io/allow-namespaces``: a comma-separated list of namespaces, or
``*`` for every namespace and for stubs outside any namespace. A Service the asker may not
use is answered exactly like one that does not exist (404), so names in other namespaces
cannot be probed. The viewer's path is normalised (:func:`~.resolver.normalise_path`: ``..``,
``.`` and encoded separators are a 400) and its query string is dropped from the upstream
URL unless the Service says ``media.mediastreamingmesh.io/allow-query: "true"``.

Multicast: ``media.mediastreamingmesh.io/multicast: "true"`` on a Service lets its viewers ask
``RTP/AVP;multicast`` (each node then sends the stream once to a group of the control plane's
pool, and DESCRIBE announces that group); without it such a SETUP is answered 461.

Camera credentials: ``media.mediastreamingmesh.io/credentials-secret: <name>`` on a Service names
a Secret *in the Service's own namespace* (a name, never ``namespace/name``), of type ``Opaque``
or ``kubernetes.io/basic-auth``, with keys ``username`` and ``password``. Both go, percent-encoded,
into the userinfo of the route URL; the stub opening the camera answers its Digest/Basic
challenge with them and strips them from every request line. The Secret is read with a GET when
a route is opened, not watched (see :class:`_SecretCache`). A Secret that is missing, unreadable
(403) or without a key fails the route with a 503 that names the Secret and never its values.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote, urlsplit

import aiohttp

from msm.runtime.backoff import Backoff
from msm.runtime.hostport import parse_host_port
from msm.sdk.errors import ConfigError, KubeError, NotFound, Unavailable

from .resolver import NO_ASKER, Asker, BadPath, Route, RouteError, normalise_path, parse_switch

__all__ = ["ALLOW_NAMESPACES", "ALLOW_QUERY", "CREDENTIALS_SECRET", "KubeClient", "KubeError", "KubernetesResolver"]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ALLOW_NAMESPACES = "media.mediastreamingmesh.io/allow-namespaces"
ALLOW_QUERY = "media.mediastreamingmesh.io/allow-query"
CREDENTIALS_SECRET = "media.mediastreamingmesh.io/credentials-secret"
MULTICAST = "media.mediastreamingmesh.io/multicast"
SECRET_TYPES = ("Opaque", "kubernetes.io/basic-auth")   # basic-auth's keys are username and password too
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")   # a DNS subdomain: no '/', no namespace
# One watch event is one JSON line; an EndpointSlice holds at most 1000
# endpoints (the API's own cap), a few hundred KiB. Lines past this are refused.
MAX_EVENT_BYTES = 4 << 20
_SEGMENT = re.compile(r"[^A-Za-z0-9._~-]+")
_QUERY = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{1,1024}$")


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]


class ServicePort(TypedDict, total=False):
    name: str
    port: int
    targetPort: int | str
    protocol: str


class Service(TypedDict, total=False):
    metadata: ObjectMeta
    spec: dict[str, Any]


class EndpointSlice(TypedDict, total=False):
    metadata: ObjectMeta
    addressType: str
    endpoints: list[dict[str, Any]]
    ports: list[dict[str, Any]]


class KubeClient:
    """The few calls msm makes: GET a list, and watch it."""

    def __init__(self, server: str, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 token_file: Path | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.token_file = token_file
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """In-cluster service account, else the kubeconfig file (``--kubeconfig``/``KUBECONFIG``)."""
        path = kubeconfig or os.environ.get("KUBECONFIG")
        if not path and (SERVICE_ACCOUNT / "token").exists():
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
            return cls(f"https://{host}:{port}", ssl_context=context, token_file=SERVICE_ACCOUNT / "token")
        if not path:
            raise KubeError("no kubeconfig: give --kubeconfig or KUBECONFIG, or run in a pod")
        return cls.from_kubeconfig(path)

    @classmethod
    def from_kubeconfig(cls, path: str) -> KubeClient:
        """The client a kubeconfig file describes (its current context); :class:`KubeError` if unusable."""
        import yaml

        try:
            config = yaml.safe_load(Path(path).read_text())
            current = config.get("current-context") or config["contexts"][0]["name"]
            context = next(c["context"] for c in config["contexts"] if c["name"] == current)
            cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
            user: dict[str, Any] = next(
                (u["user"] for u in config.get("users") or [] if u["name"] == context.get("user")), {})
            server: str = cluster["server"]
            ssl_context = _tls_context(cluster, user) if server.startswith("https") else None
        except (OSError, ValueError, yaml.YAMLError, KeyError, IndexError, StopIteration, TypeError,
                AttributeError) as exc:  # OSError: ssl.SSLError too; ValueError: bad base64 too
            raise KubeError(f"cannot use kubeconfig {path}: {exc}") from exc
        token_file = Path(user["tokenFile"]) if user.get("tokenFile") else None
        return cls(server, token=user.get("token"), ssl_context=ssl_context, token_file=token_file)

    def _headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            with contextlib.suppress(OSError):
                token = self.token_file.read_text().strip()   # rotated by the kubelet
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context else False),
                read_bufsize=1 << 16, max_line_size=MAX_EVENT_BYTES, max_field_size=8190)
        return self._session

    async def get(self, path: str) -> dict[str, Any]:
        try:
            async with self._client().get(self.server + path, headers=self._headers(),
                                           timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status != 200:
                    raise KubeError(f"GET {path}: HTTP {response.status} {(await response.text())[:200]}")
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
            raise KubeError(f"GET {path}: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise KubeError(f"GET {path}: not a JSON object")
        return data

    async def get_status(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET ``path``: the HTTP status and the JSON object answered (a ``Status``, or ``{}``, when not 200).

        For callers that tell a 404 or a 403 apart; transport failures are :class:`KubeError`.
        """
        try:
            async with self._client().get(self.server + path, headers=self._headers(),
                                          timeout=aiohttp.ClientTimeout(total=10)) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    if response.status == 200:
                        raise
                    data = {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KubeError(f"GET {path}: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            if response.status == 200:
                raise KubeError(f"GET {path}: not a JSON object")
            data = {}
        return response.status, data

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (a create: 200 or 201); the object the API server answers, or :class:`KubeError`."""
        try:
            async with self._client().post(self.server + path, json=body, headers=self._headers(),
                                           timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status not in (200, 201):
                    raise KubeError(f"POST {path}: HTTP {response.status} {(await response.text())[:200]}")
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KubeError(f"POST {path}: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise KubeError(f"POST {path}: not a JSON object")
        return data

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        sep = "&" if "?" in path else "?"
        url = f"{self.server}{path}{sep}watch=1&allowWatchBookmarks=true&resourceVersion={quote(resource_version)}"
        try:
            async with self._client().get(url, headers=self._headers(),
                                          timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as response:
                if response.status != 200:
                    raise KubeError(f"watch {path}: HTTP {response.status}")
                while line := await response.content.readline():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError) as exc:
            raise KubeError(f"watch {path}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _tls_context(cluster: dict[str, Any], user: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a kubeconfig's cluster and user (CA, client certificate)."""
    import base64
    import tempfile

    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=cluster["certificate-authority"])
    if cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    cert, key = user.get("client-certificate"), user.get("client-key")
    if user.get("client-certificate-data"):
        # ssl can only load client certificates from files.
        tmp = Path(tempfile.mkdtemp(prefix="msm-kube-"))
        cert, key = str(tmp / "tls.crt"), str(tmp / "tls.key")
        Path(cert).write_bytes(base64.b64decode(user["client-certificate-data"]))
        Path(key).write_bytes(base64.b64decode(user["client-key-data"]))
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def _multicast(svc: dict[str, Any], namespace: str, name: str) -> bool:
    """The Service's MULTICAST annotation; a value that is no switch: off, logged (never a failed route)."""
    value = _annotations(svc).get(MULTICAST, "")
    try:
        return parse_switch(value, f"service {namespace}/{name}: annotation {MULTICAST}")
    except RouteError as exc:
        log.warning("%s", exc)
        return False


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class _Cache:
    """One resource kind, listed then watched; relists when the watch expires (410)."""

    def __init__(self, client: KubeClient, path: str, on_change: Callable[[], None]) -> None:
        self.client = client
        self.path = path
        self.on_change = on_change
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """List, then watch from the listed version; on any failure back off and list again."""
        backoff = Backoff(first=0.5, maximum=10.0)
        while True:
            try:
                listing = await self.client.get(self.path)
                self.items = {_key(o): o for o in listing.get("items") or [] if isinstance(o, dict)}
                self.on_change()
                self.synced.set()
                backoff.reset()
                await self._watch((listing.get("metadata") or {}).get("resourceVersion", ""))
            except KubeError as exc:
                log.warning("kubernetes: %s; retrying in %.1fs", exc, backoff.delay)
                await backoff.wait()

    async def _watch(self, version: str) -> None:
        """Apply watch events from ``version`` on, reconnecting after each clean end; KubeError to relist."""
        while True:
            async for event in self.client.watch(self.path, version):
                obj = event.get("object") or {}
                kind = event.get("type")
                if kind == "ERROR":
                    raise KubeError(f"watch {self.path}: {obj.get('message', 'expired')}")
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED"):
                    self.items[_key(obj)] = obj
                elif kind == "DELETED":
                    self.items.pop(_key(obj), None)
                if kind != "BOOKMARK":
                    self.on_change()


class _SecretCache:
    """Camera credentials from the Secrets Services name, read with a GET and kept ``ttl`` seconds.

    Why a GET and not a watch: watching Secrets means ``list``/``watch`` on every Secret of the
    cluster (RBAC cannot narrow a cluster-wide list to the names annotations will give later),
    and a watch cache would hold them all in this process. A GET of the one Secret a Service
    names needs ``get`` alone and holds only the credentials in use. A changed Secret is used by
    the routes opened once ``ttl`` has passed (streams already open keep their session); at most
    ``size`` entries are kept, the oldest dropped first. Failures are not cached: a Secret
    created after a failed open is used by the next one.
    """

    def __init__(self, client: KubeClient, *, ttl: float = 5.0, size: int = 256) -> None:
        self.client = client
        self.ttl = ttl
        self.size = size
        self._entries: dict[tuple[str, str], tuple[float, str]] = {}

    async def userinfo(self, namespace: str, name: str, service: str) -> str:
        """``user:password@``, both percent-encoded, for Secret ``namespace/name``; :class:`Unavailable` if unusable."""
        where = f"service {namespace}/{service}: credentials Secret {namespace}/{name}"
        if not _SECRET_NAME.match(name):
            raise Unavailable(f"service {namespace}/{service}: annotation {CREDENTIALS_SECRET} must be the name of a "
                              f"Secret in namespace {namespace}, not {name[:80]!r}")
        key = (namespace, name)
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        self._entries.pop(key, None)
        status, secret = await self.client.get_status(
            f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}")
        if status == 404:
            raise Unavailable(f"{where} not found (annotation {CREDENTIALS_SECRET})")
        if status == 403:
            raise KubeError(f"{where}: the control plane may not get it "
                            "(HTTP 403; chart value controlPlane.cameraCredentials.readSecrets)")
        if status != 200:
            raise KubeError(f"{where}: HTTP {status} {str(secret.get('reason', ''))[:80]}".rstrip())
        kind = secret.get("type") or "Opaque"
        if kind not in SECRET_TYPES:
            raise Unavailable(f"{where} is of type {str(kind)[:80]!r}, not {' or '.join(SECRET_TYPES)}")
        data = secret.get("data") or {}
        user, password = (_secret_value(data, field, where) for field in ("username", "password"))
        if not user:
            raise Unavailable(f"{where}: key 'username' is empty")
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        while len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (now + self.ttl, userinfo)
        return userinfo


def _secret_value(data: Any, field: str, where: str) -> str:
    """The decoded value of ``field`` in a Secret's ``data``; errors name the key, never the value."""
    value = data.get(field) if isinstance(data, dict) else None
    if value is None:
        raise Unavailable(f"{where} has no key {field!r}")
    try:
        return base64.b64decode(str(value), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):   # UnicodeDecodeError is a ValueError
        raise Unavailable(f"{where}: key {field!r} is not base64 of UTF-8 text") from None


class KubernetesResolver:
    def __init__(self, client: KubeClient, *, secret_ttl: float = 5.0) -> None:
        self.client = client
        self.secrets = _SecretCache(client, ttl=secret_ttl)
        self.services = _Cache(client, "/api/v1/services", self._reindex)
        self.slices = _Cache(client, "/apis/discovery.k8s.io/v1/endpointslices", lambda: None)
        self._by_ip: dict[str, tuple[str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _reindex(self) -> None:
        by_ip = {}
        for key, svc in self.services.items.items():
            spec = svc.get("spec") or {}
            for ip in [spec.get("clusterIP"), *(spec.get("clusterIPs") or [])]:
                if ip and ip != "None":
                    by_ip[ip] = key
        self._by_ip = by_ip

    async def start(self, timeout: float = 10.0) -> None:
        self._tasks = [asyncio.create_task(self.services.run(), name="k8s-services"),
                       asyncio.create_task(self.slices.run(), name="k8s-endpointslices")]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(self.services.synced.wait(), self.slices.synced.wait()),
                                   timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    def _service_for(self, host: str, asker: Asker) -> tuple[str, str] | None:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return self._by_ip.get(host)
        labels = host.split(".")
        name = labels[0]
        namespace = labels[1] if len(labels) > 1 and labels[1] != "svc" else (asker.namespace or "default")
        key = (namespace, name)
        return key if key in self.services.items else None

    async def resolve(self, url: str, asker: Asker = NO_ASKER) -> Route:
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or 554
        except ValueError:
            raise NotFound(f"bad port in {url!r}") from None
        key = self._service_for(host, asker)
        if key is None and asker.original_dst:
            with contextlib.suppress(ConfigError):  # not IP:PORT: no Service can be found by it
                dst = parse_host_port(asker.original_dst, what="original destination")
                key = self._by_ip.get(dst.host)
                port = dst.port
        if key is None or not self._may_use(key, asker):
            # The same answer for "none" and "not yours": other namespaces cannot be probed.
            raise NotFound(f"no Kubernetes service {host or asker.original_dst} "
                           f"for namespace {asker.namespace or '(none)'}")
        namespace, name = key
        svc = self.services.items[key]
        path = normalise_path(parts.path or "/")
        query = ""
        if parts.query:
            if _annotations(svc).get(ALLOW_QUERY, "").strip().lower() != "true":
                raise BadPath(f"service {namespace}/{name} takes no query string (annotation {ALLOW_QUERY})")
            if not _QUERY.match(parts.query):
                raise BadPath("query string holds characters a URL may not")
            query = "?" + parts.query
        ports: list[ServicePort] = (svc.get("spec") or {}).get("ports") or []
        svc_port = next((p for p in ports if p.get("port") == port), None)
        if svc_port is None:
            raise NotFound(f"service {namespace}/{name} has no port {port}")
        for endpoint, endpoint_port in self._endpoints(namespace, name, svc_port):
            address = endpoint["addresses"][0]
            target = endpoint.get("targetRef") or {}
            host_part = f"[{address}]" if ":" in address else address
            segments = [s for s in (_SEGMENT.sub("_", seg) for seg in path.split("/")) if s]
            secret = _annotations(svc).get(CREDENTIALS_SECRET, "").strip()
            # The Service's own namespace, whoever asks: another namespace's Secrets are never read.
            userinfo = await self.secrets.userinfo(namespace, secret, name) if secret else ""
            return Route(name="/".join([namespace, name, *segments]),
                         url=f"{parts.scheme or 'rtsp'}://{userinfo}{host_part}:{endpoint_port}{path}{query}",
                         node=endpoint.get("nodeName", ""), namespace=target.get("namespace", namespace),
                         pod=target.get("name", "") if target.get("kind", "Pod") == "Pod" else "",
                         multicast=_multicast(svc, namespace, name))
        raise NotFound(f"service {namespace}/{name} has no ready endpoint")

    def _may_use(self, key: tuple[str, str], asker: Asker) -> bool:
        """The asker's own namespace, or one the Service's allow-namespaces annotation names."""
        namespace = key[0]
        if asker.namespace and asker.namespace == namespace:
            return True
        allowed = {n.strip() for n in _annotations(self.services.items[key]).get(ALLOW_NAMESPACES, "").split(",")}
        return "*" in allowed or bool(asker.namespace) and asker.namespace in allowed

    def _endpoints(self, namespace: str, service: str,
                   svc_port: ServicePort) -> Iterator[tuple[dict[str, Any], int]]:
        target = svc_port.get("targetPort", svc_port.get("port"))
        for (ns, _), slice_ in sorted(self.slices.items.items()):
            labels = (slice_.get("metadata") or {}).get("labels") or {}
            if ns != namespace or labels.get(SERVICE_NAME_LABEL) != service:
                continue
            slice_ports = slice_.get("ports") or []
            match = next((p for p in slice_ports if p.get("name", "") == svc_port.get("name", "")), None)
            if match is None and len(slice_ports) == 1:
                match = slice_ports[0]
            number = match.get("port") if match else (target if isinstance(target, int) else None)
            if not isinstance(number, int):
                continue
            for endpoint in slice_.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False or not endpoint.get("addresses"):
                    continue
                yield endpoint, number

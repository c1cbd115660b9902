"""A stand-in for the Kubernetes API server, serving recorded JSON.

No API server can run on these machines, so tests that need one get this:
list and watch for Services and EndpointSlices, GET for Pods, bearer-token
auth, resource versions, and watch events pushed when a test changes an
object. Objects come from the hand-written fixtures in ``tests/data/k8s``.

Secrets are served one at a time, as ``GET /api/v1/namespaces/<ns>/secrets/<name>`` answers
them: a v1 Secret with its ``type`` and base64 ``data`` (:func:`secret` makes one), a 404
``Status`` when there is none, and a 403 ``Status`` (RBAC's words) for the namespaces in
:attr:`FakeKube.forbidden_secrets`, where the caller's account may not get secrets.

Service-account tokens as the kubelet projects them: :meth:`FakeKube.issue_token` plays the
TokenRequest API (a token for a service account, bound to a pod and its node, for some
audiences, expiring), and ``POST /apis/authentication.k8s.io/v1/tokenreviews`` answers a
TokenReview as the API server does (201 with ``status.authenticated``, ``status.audiences``,
``status.user`` with ``system:serviceaccount:<ns>:<sa>``, its groups, and the
``authentication.kubernetes.io/pod-name``/``pod-uid``/``node-name``/``node-uid``/
``credential-id`` extras of a pod-bound token; ``status.error`` when it is not accepted).
A token bound to a pod that is gone, or expired, or for none of the audiences asked, is
not authenticated.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

DATA = Path(__file__).parent / "data" / "k8s"

RESOURCES = {
    "services": ("/api/v1/services", "ServiceList", "v1"),
    "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList", "discovery.k8s.io/v1"),
    "pods": ("/api/v1/pods", "PodList", "v1"),
    "secrets": ("/api/v1/secrets", "SecretList", "v1"),   # GET one by name only (no list, no watch)
}


TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
# The extras the API server puts in a TokenReview of a pod-bound service-account token.
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
NODE_UID = "authentication.kubernetes.io/node-uid"
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def secret(namespace: str, name: str, data: dict[str, str | bytes], *, type_: str = "Opaque") -> dict[str, Any]:
    """A v1 Secret as the API server returns it: ``data`` values base64-encoded (``stringData`` is write-only)."""
    import base64

    return {"kind": "Secret", "apiVersion": "v1", "type": type_,
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "creationTimestamp": "2024-05-01T12:00:00Z"},
            "data": {key: base64.b64encode(value.encode() if isinstance(value, str) else value).decode()
                     for key, value in data.items()}}


def helm_mesh_ca(directory: Path, common_name: str = "msm mesh CA (cluster.local)", days: int = 3650) -> Path:
    """The chart's mesh CA Secret as files (``ca-cert.pem``, ``ca-key.pem``), made the way Helm's
    ``genPrivateKey "ecdsa"`` + ``genCAWithKey`` make it: a P-256 key and a self-signed CA
    certificate whose subject is a CN only (no O, so no trust domain in it), CA basic
    constraints, key usages digitalSignature, keyEncipherment and keyCertSign, EKU server
    and client auth, as Sprig's ``generateCertificateAuthorityWithKeyInternal`` writes them."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Helm writes an EC key as SEC1 ("EC PRIVATE KEY"), as Go's x509.MarshalECPrivateKey does.
    (directory / "ca-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (directory / "ca-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-key.pem").chmod(0o600)
    return directory


@dataclass(frozen=True, slots=True)
class ServiceAccountToken:
    """What the API server knows of a token it issued (TokenRequest)."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expires: float
    pod: str = ""
    pod_uid: str = ""
    node: str = ""
    jti: str = ""


class FakeKube:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.version = 2000
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {kind: {} for kind in RESOURCES}
        self.watchers: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {kind: [] for kind in RESOURCES}
        self.requests: list[str] = []
        self.tokens: dict[str, ServiceAccountToken] = {}
        self.forbidden_secrets: set[str] = set()   # namespaces whose secrets the caller may not get
        self.user = "system:serviceaccount:msm-system:msm-control-plane"
        self.runner: web.AppRunner | None = None
        self.url = ""

    def add_list(self, kind: str, listing: dict[str, Any]) -> None:
        for item in listing["items"]:
            self.put(kind, item, notify=False)

    def put(self, kind: str, obj: dict[str, Any], *, notify: bool = True) -> None:
        obj = copy.deepcopy(obj)
        self.version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        event = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self.objects[kind][key] = obj
        if notify:
            self._notify(kind, event, obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects[kind].pop((namespace, name))
        self.version += 1
        self._notify(kind, "DELETED", obj)

    def _notify(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        for queue in self.watchers[kind]:
            queue.put_nowait({"type": event, "object": obj})

    def issue_token(self, namespace: str, service_account: str, *, pod: str = "", node: str = "",
                    audiences: tuple[str, ...] = ("msm",), expires_in: float = 600) -> str:
        """A token as TokenRequest (the kubelet's projected volume) makes it: opaque here, a JWT there."""
        token = "eyJ" + secrets.token_urlsafe(48)
        pod_uid = ""
        if pod:
            obj = self.objects["pods"].get((namespace, pod), {})
            pod_uid = str((obj.get("metadata") or {}).get("uid") or uuid.uuid4())
        self.tokens[token] = ServiceAccountToken(namespace, service_account, tuple(audiences),
                                                 time.time() + expires_in, pod, pod_uid, node,
                                                 str(uuid.uuid4()))
        return token

    def _review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The ``status`` of a TokenReview of ``spec`` (see the API reference, TokenReviewStatus)."""
        token = self.tokens.get(str(spec.get("token", "")))
        wanted = [str(a) for a in spec.get("audiences") or []] or ["https://kubernetes.default.svc.cluster.local"]
        if token is None:
            return {"user": {}, "error": "[invalid bearer token, service account token is not valid]"}
        if token.expires < time.time():
            return {"user": {}, "error": "[invalid bearer token, service account token has expired]"}
        audiences = [a for a in wanted if a in token.audiences]
        if not audiences:
            return {"user": {}, "error": "[invalid bearer token, token audiences "
                    f"{json.dumps(list(token.audiences))} is invalid for the target audiences {json.dumps(wanted)}]"}
        extra: dict[str, list[str]] = {CREDENTIAL_ID: [f"JTI={token.jti}"]}
        if token.pod:
            pod = self.objects["pods"].get((token.namespace, token.pod))
            if pod is None or str((pod.get("metadata") or {}).get("uid") or token.pod_uid) != token.pod_uid:
                return {"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"}
            extra |= {POD_NAME: [token.pod], POD_UID: [token.pod_uid]}
            if token.node:
                extra |= {NODE_NAME: [token.node], NODE_UID: [str(uuid.uuid5(uuid.NAMESPACE_DNS, token.node))]}
        return {"authenticated": True, "audiences": audiences, "user": {
            "username": f"system:serviceaccount:{token.namespace}:{token.service_account}",
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{token.namespace}.{token.service_account}")),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{token.namespace}",
                       "system:authenticated"],
            "extra": extra}}

    async def _tokenreview(self, request: web.Request) -> web.Response:
        self.requests.append(f"POST {request.rel_url}")
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": "Unauthorized", "reason": "Unauthorized", "code": 401}, status=401)
        try:
            body = await request.json()
            if not isinstance(body, dict) or body.get("kind") != "TokenReview" \
                    or body.get("apiVersion") != "authentication.k8s.io/v1" or not isinstance(body.get("spec"), dict):
                raise ValueError("not an authentication.k8s.io/v1 TokenReview")
        except ValueError as exc:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f"the body of the request was in an unknown format: {exc}",
                                      "reason": "BadRequest", "code": 400}, status=400)
        spec = body["spec"]
        return web.json_response({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"creationTimestamp": None}, "spec": spec,
                                  "status": self._review(spec)}, status=201)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _list(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        self.requests.append(str(request.rel_url))
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "Unauthorized", "code": 401}, status=401)
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request, kind)
        _, list_kind, api_version = RESOURCES[kind]
        return web.json_response({"kind": list_kind, "apiVersion": api_version,
                                  "metadata": {"resourceVersion": str(self.version)},
                                  # list items carry no kind/apiVersion (the envelope does)
                                  "items": [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                                            for obj in self.objects[kind].values()]})

    async def _watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.watchers[kind].append(queue)
        try:
            while True:
                event = await queue.get()
                await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watchers[kind].remove(queue)

    async def _pod(self, request: web.Request) -> web.Response:
        self.requests.append(str(request.rel_url))
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        key = (request.match_info["namespace"], request.match_info["name"])
        pod = self.objects["pods"].get(key)
        if pod is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "message": f'pods "{key[1]}" not found', "reason": "NotFound",
                                      "details": {"name": key[1], "kind": "pods"}, "code": 404}, status=404)
        return web.json_response(pod)

    async def _secret(self, request: web.Request) -> web.Response:
        self.requests.append(str(request.rel_url))
        if not self._authorized(request):
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if namespace in self.forbidden_secrets:
            return web.json_response({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f'secrets "{name}" is forbidden: User "{self.user}" cannot get resource "secrets" '
                           f'in API group "" in the namespace "{namespace}"',
                "reason": "Forbidden", "details": {"name": name, "kind": "secrets"}, "code": 403}, status=403)
        obj = self.objects["secrets"].get((namespace, name))
        if obj is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f'secrets "{name}" not found', "reason": "NotFound",
                                      "details": {"name": name, "kind": "secrets"}, "code": 404}, status=404)
        return web.json_response({"kind": "Secret", "apiVersion": "v1", **obj})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods/{name}", self._pod)
        app.router.add_get("/api/v1/namespaces/{namespace}/secrets/{name}", self._secret)
        app.router.add_post(TOKENREVIEWS, self._tokenreview)
        app.router.add_get("/api/v1/{kind:services|pods}", self._list)
        app.router.add_get("/apis/discovery.k8s.io/v1/{kind:endpointslices}", self._list)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)  # watches never end
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = self.runner.addresses[0]
        self.url = f"http://{host}:{bound[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


# -- as a process -----------------------------------------------------------------------------
#
# ``python -m tests.fake_kube --listen HOST:PORT [--token T] [--objects FILE]`` serves the
# objects in FILE (a JSON list of objects and/or v1 ``*List`` envelopes) and then takes
# commands on stdin, one JSON object per line, answering each with one JSON line on stdout:
#
#   {"op": "put", "object": {...}}                  add or replace (watchers get ADDED/MODIFIED)
#   {"op": "delete", "kind": "pods", "namespace": "media", "name": "x"}   (watchers get DELETED)
#   {"op": "status"}                                resource version, objects and open watches
#   {"op": "token", "namespace": "media", "serviceAccount": "default", "pod": "x", "node": "n",
#    "audiences": ["msm"], "expiresIn": 600}       a projected token (answer: {"ok": true, "token": T})
#
# Answers are {"ok": true, "version": N, "watchers": {kind: n}, "objects": {kind: n}} or
# {"ok": false, "error": "..."}. The first line, once listening, is {"ok": true, "listening": URL}.
# It stops at the end of stdin or on SIGTERM. Tests that run components in other network
# namespaces (tests/e2e/test_multinode.py) use it this way: the test process cannot reach the
# API server's address, but it holds the server's stdin.

KINDS = {"Service": "services", "EndpointSlice": "endpointslices", "Pod": "pods", "Secret": "secrets"}


def _kind_of(obj: dict[str, Any]) -> str:
    kind = KINDS.get(str(obj.get("kind", "")))
    if kind is None:
        raise ValueError(f"cannot serve objects of kind {obj.get('kind')!r} (only {', '.join(KINDS)})")
    return kind


def _objects_in(doc: Any) -> list[dict[str, Any]]:
    """Objects in a JSON document: one object, a ``*List`` envelope, or a list of either."""
    if isinstance(doc, list):
        return [obj for item in doc for obj in _objects_in(item)]
    if not isinstance(doc, dict):
        raise ValueError(f"not a Kubernetes object: {doc!r:.80}")
    kind = str(doc.get("kind", ""))
    if kind.endswith("List") and isinstance(doc.get("items"), list):
        item_kind = kind.removesuffix("List")
        return [{"kind": item_kind, "apiVersion": doc.get("apiVersion", "v1"), **item} for item in doc["items"]]
    return [doc]


def _status(kube: FakeKube) -> dict[str, Any]:
    return {"ok": True, "version": kube.version,
            "watchers": {kind: len(queues) for kind, queues in kube.watchers.items()},
            "objects": {kind: len(objs) for kind, objs in kube.objects.items()}}


def _command(kube: FakeKube, line: str) -> dict[str, Any]:
    try:
        command = json.loads(line)
        op = command.get("op")
        if op == "put":
            obj = command["object"]
            kube.put(_kind_of(obj), obj)
        elif op == "delete":
            kube.delete(command["kind"], command.get("namespace", ""), command["name"])
        elif op == "token":
            token = kube.issue_token(command["namespace"], command["serviceAccount"], pod=command.get("pod", ""),
                                     node=command.get("node", ""),
                                     audiences=tuple(command.get("audiences") or ("msm",)),
                                     expires_in=float(command.get("expiresIn", 600)))
            return {"ok": True, "token": token}
        elif op != "status":
            raise ValueError(f"unknown op {op!r} (put, delete, status, token)")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return _status(kube)


async def _serve(listen: str, token: str, objects: list[dict[str, Any]]) -> None:
    import signal
    import sys
    import threading

    kube = FakeKube(token=token)
    for obj in objects:
        kube.put(_kind_of(obj), obj, notify=False)
    host, _, port = listen.rpartition(":")
    await kube.start(host.strip("[]") or "127.0.0.1", int(port))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def answer(reply: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    answer({"ok": True, "listening": kube.url})

    def read_commands() -> None:  # a daemon thread: a blocked readline must not hold up exit
        for line in sys.stdin:
            if line.strip():
                asyncio.run_coroutine_threadsafe(_run(line), loop).result()
        loop.call_soon_threadsafe(stop.set)

    async def _run(line: str) -> None:
        answer(_command(kube, line))

    threading.Thread(target=read_commands, name="fake-kube-stdin", daemon=True).start()
    await stop.wait()
    await kube.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.fake_kube", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on")
    parser.add_argument("--token", default="test-token", help="the bearer token clients must send")
    parser.add_argument("--objects", help="JSON file: objects and/or *List envelopes to serve from the start")
    opts = parser.parse_args(argv)
    objects = _objects_in(json.loads(Path(opts.objects).read_text())) if opts.objects else []
    asyncio.run(_serve(opts.listen, opts.token, objects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The webhook over real HTTPS: a self-signed certificate made by ``openssl`` for each test, the
server on 127.0.0.1:0, aiohttp as the client (trusting only that certificate), and the
certificate swapped on disk while the server runs, the way Kubernetes updates a mounted Secret.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest

from msm.webhook.review import MAX_REVIEW_BYTES, InjectConfig
from msm.webhook.server import ReloadingTLS, WebhookServer
from tests.datafiles import load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = InjectConfig(stub_image="registry.example/msm:0.1.0")


@dataclass
class Pair:
    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


def make_pair(directory: Path, name: str) -> Pair:
    """A fresh self-signed P-256 certificate for localhost and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / "tls.crt", directory / "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(pair.key), "-out", str(pair.cert)],
                   check=True, capture_output=True, timeout=30)
    return pair


class SecretVolume:
    """A directory laid out like a mounted Kubernetes Secret: ``tls.crt -> ..data/tls.crt``,
    ``..data -> ..<timestamp>/``; an update writes a new timestamped directory and swaps ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(Path("..data") / name)

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def publish(self, cert: bytes, key: bytes) -> None:
        self.generation += 1
        version = self.root / f"..2024_05_14_09_21_{self.generation:02d}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert)
        (version / "tls.key").write_bytes(key)
        temporary = self.root / "..data_tmp"
        temporary.symlink_to(version.name)
        os.replace(temporary, self.root / "..data")  # atomic, as the kubelet does it


async def served_certificate(port: int, server_name: str | None = None) -> bytes:
    """The DER certificate the server presents to a new TLS connection."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name or "")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    assert der
    return der  # type: ignore[no-any-return]


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[WebhookServer, Pair]]:
    pair = make_pair(tmp_path / "a", "webhook-a")
    server = WebhookServer(CONFIG, ReloadingTLS(pair.cert, pair.key), shutdown_timeout=1.0)
    await server.start("127.0.0.1", 0)
    try:
        yield server, pair
    finally:
        await server.stop()


def trusting(pair: Pair) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pair.cert))


async def test_mutate_over_https(started: tuple[WebhookServer, Pair]) -> None:
    server, pair = started
    document = json.loads(load("k8s/webhook_pod_create_deployment_labelled.json"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/healthz", ssl=trusting(pair)) as health:
            assert health.status == 200 and (await health.text()).strip() == "ok"
        async with session.post(f"{server.url}/mutate", json=document, ssl=trusting(pair)) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            body = await response.json()
    answer = body["response"]
    assert body["kind"] == "AdmissionReview" and answer["uid"] == document["request"]["uid"]
    assert answer["allowed"] is True and answer["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(document["request"]["object"], json.loads(base64.b64decode(answer["patch"])))
    kubernetes_validate.validate(pod, "1.30", strict=True)
    assert pod["spec"]["containers"][-1]["name"] == "msm-stub"


async def test_memif_pod_over_https(started: tuple[WebhookServer, Pair]) -> None:
    """The media socket directory over the real server: a patch for "true", a v1 Status for a bad value."""
    server, pair = started
    document = json.loads(load("k8s/webhook_pod_create_media.json"))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/mutate", json=document, ssl=trusting(pair)) as response:
            assert response.status == 200
            answer = (await response.json())["response"]
        pod = jsonpatch.apply_patch(document["request"]["object"], json.loads(base64.b64decode(answer["patch"])))
        kubernetes_validate.validate(pod, "1.30", strict=True)
        assert pod["spec"]["volumes"][-1]["hostPath"] == {"path": "/var/run/msm/media", "type": "DirectoryOrCreate"}
        assert {"name": "MSM_PROXY", "value": "unix:/run/msm/media/proxy.sock"} in pod["spec"]["containers"][0]["env"]
        document["request"]["object"]["metadata"]["annotations"]["media.mediastreamingmesh.io/memif"] = "on"
        async with session.post(f"{server.url}/mutate", json=document, ssl=trusting(pair)) as response:
            assert response.status == 400
            status = await response.json()
    assert status["kind"] == "Status" and "media.mediastreamingmesh.io/memif" in status["message"]


async def test_bad_requests_over_https(started: tuple[WebhookServer, Pair]) -> None:
    server, pair = started
    context = trusting(pair)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    async with aiohttp.ClientSession() as session:
        for data, needle in [(b"\x00garbage", "not JSON"), (b"", "empty body"),
                             (load("k8s/webhook_deployment_create.json").replace(b"AdmissionReview", b"Deployment"),
                              "kind must be AdmissionReview"),
                             (io.BytesIO(b" " * (2 * MAX_REVIEW_BYTES)), "too large"), (chunked(), "too large")]:
            async with session.post(f"{server.url}/mutate", data=data, ssl=context) as response:
                assert response.status == 400
                assert needle in (await response.json())["message"]
        async with session.post(f"{server.url}/mutate", data=load("k8s/webhook_deployment_create.json"),
                                ssl=context) as response:
            assert response.status == 200 and "patch" not in (await response.json())["response"]
        for method, path, status in [("GET", "/mutate", 405), ("POST", "/mutate/extra", 404), ("GET", "/", 404)]:
            async with session.request(method, f"{server.url}{path}", ssl=context) as response:
                assert response.status == status
        # The server is still fine after all that.
        async with session.get(f"{server.url}/healthz", ssl=context) as response:
            assert response.status == 200


async def test_untrusted_client_sees_our_certificate_only(started: tuple[WebhookServer, Pair], tmp_path: Path) -> None:
    server, _ = started
    other = make_pair(tmp_path / "other", "someone-else")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{server.url}/healthz", ssl=trusting(other))


@pytest.mark.parametrize("server_name", [None, "localhost"], ids=["no-sni", "sni"])
async def test_certificate_reload(tmp_path: Path, server_name: str | None) -> None:
    first = make_pair(tmp_path / "a", "webhook-a")
    second = make_pair(tmp_path / "b", "webhook-b")
    third = make_pair(tmp_path / "c", "webhook-c")
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(first.cert.read_bytes(), first.key.read_bytes())
    tls = ReloadingTLS(volume.cert, volume.key)
    server = WebhookServer(CONFIG, tls, shutdown_timeout=1.0)
    await server.start("127.0.0.1", 0)
    try:
        assert await served_certificate(server.port, server_name) == first.der

        async with aiohttp.ClientSession() as session:  # a keep-alive connection made before the swap
            async with session.get(f"{server.url}/healthz", ssl=trusting(first)) as response:
                assert response.status == 200

            volume.publish(second.cert.read_bytes(), second.key.read_bytes())
            assert await served_certificate(server.port, server_name) == second.der
            assert tls.reloads == 1
            async with aiohttp.ClientSession() as fresh:
                async with fresh.get(f"{server.url}/healthz", ssl=trusting(second)) as response:
                    assert response.status == 200

            # A half-updated pair (new certificate, old key) does not load: the last good pair stays.
            volume.publish(third.cert.read_bytes(), second.key.read_bytes())
            assert await served_certificate(server.port, server_name) == second.der
            assert await served_certificate(server.port, server_name) == second.der
            volume.publish(third.cert.read_bytes(), third.key.read_bytes())
            assert await served_certificate(server.port, server_name) == third.der
            assert tls.reloads == 2

            # Files replaced in place (no symlink swap) are noticed too, even within the same second.
            for source, target in ((first.cert, volume.cert), (first.key, volume.key)):
                staged = tmp_path / f"staged-{source.name}"
                shutil.copyfile(source, staged)
                os.replace(staged, target.resolve())
            assert await served_certificate(server.port, server_name) == first.der
            assert tls.reloads == 3

            # The connection opened before the swaps still works.
            async with session.get(f"{server.url}/healthz", ssl=trusting(first)) as response:
                assert response.status == 200
    finally:
        await server.stop()


async def test_the_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "a", "webhook-a")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MSM_STUB_IMAGE": "env/msm:1",
           "MSM_TLS_CERT": str(pair.cert), "MSM_TLS_KEY": str(pair.key)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msm.webhook.main", "--host", "127.0.0.1", "--port", "0", "--stub-image", "flag/msm:2",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        assert b"listening on https://127.0.0.1:" in line, line
        url = line.decode().split("listening on ")[1].strip()
        document = json.loads(load("k8s/webhook_pod_create_annotated.json"))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/healthz", ssl=trusting(pair)) as response:
                assert response.status == 200
            async with session.post(f"{url}/mutate", json=document, ssl=trusting(pair)) as response:
                answer: dict[str, Any] = (await response.json())["response"]
        patch = json.loads(base64.b64decode(answer["patch"]))
        assert patch[-1]["value"]["image"] == "flag/msm:2"  # the flag beat MSM_STUB_IMAGE
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert time.monotonic() - started < 5
        rest = await process.stderr.read()
        assert b"Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

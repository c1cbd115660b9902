"""The HTTPS side of the webhook: a thin aiohttp app over :func:`msm.webhook.review.review`.

``POST /mutate`` reads at most :data:`~msm.webhook.review.MAX_REVIEW_BYTES` and answers with what
``review`` returns; ``GET /healthz`` answers ``ok``. Everything else is aiohttp's own 404/405.

The certificate is reloaded without a restart: on every TLS handshake :class:`ReloadingTLS`
stats the two files (two ``stat`` calls, cheap beside a handshake) and, when either changed, loads
them into a fresh context which that handshake and the next ones use. Kubernetes updates a mounted
Secret by swapping a symlink, and cert-manager renews certificates in place; both change the inode
or mtime. A half-written pair (new certificate, old key) fails to load: the old pair keeps serving,
the failure is logged once, and the next change is tried again.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import cast

from aiohttp import web

from msm.sdk.errors import MsmError
from msm.webhook.errors import CertificateError
from msm.webhook.review import (
    MAX_REVIEW_BYTES,
    AdmissionReview,
    InjectConfig,
    Status,
    check_size,
    rejection,
    review,
)

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", InjectConfig)

_Stamp = tuple[tuple[int, int, int, int], ...]


class ReloadingTLS:
    """A server SSL context whose certificate follows the files ``cert`` and ``key``."""

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self._stamp = self._file_stamp()
        self._current = self._load()
        self._failed: _Stamp | None = None
        self.reloads = 0
        # The listening context holds the first pair too, so a client is served even if the
        # callback below is never reached; the callback swaps in the current pair per handshake.
        self.context = self._load()
        self.context.sni_callback = self._on_client_hello

    def maybe_reload(self) -> bool:
        """Load the files again if they changed since the last load; True when a new pair is in use."""
        try:
            stamp = self._file_stamp()
        except CertificateError as exc:
            return self._failure(None, exc)
        if stamp == self._stamp or stamp == self._failed:
            return False
        try:
            context = self._load()
        except CertificateError as exc:
            return self._failure(stamp, exc)
        self._current, self._stamp, self._failed = context, stamp, None
        self.reloads += 1
        log.info("reloaded TLS certificate %s", self.cert)
        return True

    def _failure(self, stamp: _Stamp | None, exc: CertificateError) -> bool:
        if stamp is None or stamp != self._failed:
            log.warning("keeping the previous TLS certificate: %s", exc)
        self._failed = stamp
        return False

    def _on_client_hello(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                         context: ssl.SSLContext) -> None:
        # Called by OpenSSL for every ClientHello, with or without SNI (server_name is then None).
        self.maybe_reload()
        connection.context = self._current

    def _file_stamp(self) -> _Stamp:
        stamps = []
        for path in (self.cert, self.key):
            try:
                info = path.stat()  # follows the symlinks of a mounted Secret
            except OSError as exc:
                raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev))
        return tuple(stamps)

    def _load(self) -> ssl.SSLContext:
        texts = []
        for path in (self.cert, self.key):
            try:
                # Both files are a few KiB; the bound only keeps a wrong path (a disk image...) cheap.
                with path.open("rb") as file:
                    texts.append(file.read(1 << 20))
            except OSError as exc:
                raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN CERTIFICATE-----" not in texts[0]:
            raise CertificateError(f"{self.cert} holds no PEM certificate")
        if b"PRIVATE KEY-----" not in texts[1]:
            raise CertificateError(f"{self.key} holds no PEM private key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise CertificateError(f"the key in {self.key} does not match the certificate in {self.cert}") from exc
            reason = (exc.reason or "unusable").lower().replace("_", " ")
            raise CertificateError(f"cannot use certificate {self.cert} with key {self.key}: {reason}") from exc
        return context


# -- the aiohttp app -------------------------------------------------------------------------------
async def _mutate(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    answer: AdmissionReview | Status
    try:
        if request.content_length is not None:
            check_size(request.content_length)  # refuse before reading a byte of it
        body = await _read_bounded(request, MAX_REVIEW_BYTES)
        status, answer = review(body, config)
    except MsmError as exc:
        status, answer = rejection(exc)
    except Exception as exc:  # a bug of ours: the API server still gets a v1 Status, not a stack trace
        log.exception("review failed")
        status, answer = rejection(exc)
    if status == 200:
        reviewed = cast(AdmissionReview, answer)
        if "response" in reviewed:
            response = reviewed["response"]
            log.info("review %s: %s", response["uid"], response.get("auditAnnotations", {}).get("injection"))
    else:
        log.warning("refused a review from %s: %s", request.remote, cast(Status, answer)["message"])
    return web.json_response(answer, status=status)


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, or :class:`ReviewError` as soon as it passes ``limit`` (a chunked body has no length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        check_size(size)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_app(config: InjectConfig) -> web.Application:
    app = web.Application()
    app[CONFIG_KEY] = config
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    return app


class WebhookServer:
    """The app served over TLS on one address; ``start`` raises OSError when the port is taken."""

    def __init__(self, config: InjectConfig, tls: ReloadingTLS, *, shutdown_timeout: float = 5.0) -> None:
        self.app = create_app(config)
        self.tls = tls
        self.shutdown_timeout = shutdown_timeout
        self.runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str = "0.0.0.0", port: int = 8443) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=self.tls.context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner
        self.host, self.port = runner.addresses[0][:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to ``shutdown_timeout``), close."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

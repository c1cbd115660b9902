"""Fuzz the CNI plugin's reading of its network config: stdin bytes, a fixed environment.

The input is what a container runtime writes on the plugin's stdin; the environment
is a fixed Kubernetes ``ADD``.  ``decode_json`` and ``parse_conf`` may only raise the
plugin's own errors (``CniError``); and the whole invocation (``run_plugin``, with
backends and a pod source that touch nothing) must answer every input with a result
or CNI error JSON that is not code 199, the code of an exception nobody expected.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.cni_plugin import config
    from msm.cni_plugin.errors import INTERNAL, CniError
    from msm.cni_plugin.main import run_plugin
    from msm.cni_plugin.plugin import Plugin, passthrough, version

NAME = "cni_config"
KNOWN: tuple[fuzzlib.KnownBug, ...] = (
)
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "3f2a9c",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=media;K8S_POD_NAME=viewer",
    "CNI_PATH": "/opt/cni/bin",
}
POD = json.loads((fuzzlib.DATA_DIR / "k8s" / "cni_pod_labelled.json").read_bytes())


class _NoBackend:
    """A redirect backend that redirects nothing."""

    def install(self, env: Any, settings: Any) -> None:
        pass

    def remove(self, env: Any) -> None:
        pass

    def verify(self, env: Any, settings: Any) -> None:
        pass

    def collect_garbage(self, valid: set[tuple[str, str]]) -> None:
        pass

    def unavailable(self) -> str:
        return ""


PLUGIN = Plugin(backends={"nftables": _NoBackend(), "ebpf": _NoBackend()},
                pod_source=lambda kubeconfig, namespace, name, timeout: POD)


def parse(data: bytes) -> None:
    try:
        raw = config.decode_json(data)
        version(raw)
        conf, _ = config.parse_conf(raw)
    except CniError:
        return
    json.dumps(passthrough(conf))


def invoke(data: bytes) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = run_plugin(ENV, io.BytesIO(data), stdout, PLUGIN)
    answer = json.loads(stdout.getvalue()) if stdout.getvalue() else None
    if status not in (0, 1) or (status == 1 and answer["code"] == INTERNAL):
        raise AssertionError(f"msm-cni exit {status}, answer {answer!r:.300}\n{stderr.getvalue()[-2000:]}")


def test_one(data: bytes) -> None:
    try:
        parse(data)
        invoke(data)
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, []))

"""The CNI commands: what msm-cni does for ADD, DEL, CHECK, VERSION, STATUS, GC.

Each command takes the parsed environment and the decoded stdin and returns the
JSON to print (or None for "nothing, success"); failures are raised from the
``errors`` tree and turned into CNI error JSON by ``main``. The pod source and
the redirect backends are passed in, so the decisions can be tested without a
namespace or an API server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import config as cfg
from .config import CniEnv, Settings
from .errors import IncompatibleVersion, InvalidConfig, InvalidEnvironment, NetnsGone, NotAvailable
from .types import NetConf, Pod, VersionJson


class Backend(Protocol):
    """One way of redirecting a pod's traffic (nftables, eBPF)."""

    def install(self, env: CniEnv, settings: Settings) -> None: ...
    def remove(self, env: CniEnv) -> None: ...
    def verify(self, env: CniEnv, settings: Settings) -> None: ...
    def collect_garbage(self, valid: set[tuple[str, str]]) -> None: ...  # (containerID, ifname) to keep
    def unavailable(self) -> str: ...  # '' when usable, else why not


#: (kubeconfig path, namespace, name, timeout) -> the pod.
PodSource = Callable[[str, str, str, float], Pod]


class NftBackend:
    def install(self, env: CniEnv, settings: Settings) -> None:
        from . import nft

        nft.install(env.netns, settings)

    def remove(self, env: CniEnv) -> None:
        from . import nft

        if env.netns:
            nft.remove(env.netns)

    def verify(self, env: CniEnv, settings: Settings) -> None:
        from . import nft

        nft.verify(env.netns, settings)

    def collect_garbage(self, valid: set[tuple[str, str]]) -> None:
        pass  # the table lives in the pod's namespace and goes with it

    def unavailable(self) -> str:
        from . import nft

        return nft.available()


class EbpfBackend:
    def install(self, env: CniEnv, settings: Settings) -> None:
        from . import ebpf

        ebpf.install(env.netns, settings, env.container_id, env.ifname)

    def remove(self, env: CniEnv) -> None:
        from . import ebpf

        ebpf.remove(env.container_id, env.ifname)

    def verify(self, env: CniEnv, settings: Settings) -> None:
        from . import ebpf

        ebpf.verify(env.netns, settings)

    def collect_garbage(self, valid: set[tuple[str, str]]) -> None:
        from . import ebpf

        ebpf.collect_garbage(valid)

    def unavailable(self) -> str:
        from . import ebpf
        from .errors import EbpfUnavailable

        try:
            ebpf.preflight()
        except EbpfUnavailable as exc:
            return str(exc)
        return ""


def kube_pod_source(kubeconfig: str, namespace: str, name: str, timeout: float) -> Pod:
    from . import kube  # http.client and ssl only when a pod is looked up

    return kube.get_pod(kube.load_kubeconfig(kubeconfig), namespace, name, timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plugin:
    backends: dict[str, Backend]
    pod_source: PodSource = kube_pod_source

    @classmethod
    def default(cls) -> Plugin:
        return cls(backends={"nftables": NftBackend(), "ebpf": EbpfBackend()})

    def run(self, env: CniEnv, stdin: dict[str, Any] | None) -> dict[str, Any] | None:
        if env.command == "VERSION":
            return dict(version(stdin))
        if stdin is None:
            raise InvalidConfig("no network config on stdin", f"CNI {env.command} needs the network config")
        conf, settings = cfg.parse_conf(stdin)
        handler = {
            "ADD": self.add,
            "DEL": self.delete,
            "CHECK": self.check,
            "STATUS": self.status,
            "GC": self.gc,
        }[env.command]
        return handler(env, conf, settings)

    # -- the commands -----------------------------------------------------------

    def add(self, env: CniEnv, conf: NetConf, settings: Settings) -> dict[str, Any]:
        if self._wants_redirect(env, settings):
            try:
                self.backends[settings.mode].install(env, settings)
            except NetnsGone as exc:
                raise InvalidEnvironment("CNI_NETNS is not a network namespace", str(exc)) from exc
            _log(
                f"ADD {_who(env)}: TCP {list(settings.intercept_ports)} -> :{settings.redirect_port} ({settings.mode})"
            )
        return passthrough(conf)

    def delete(self, env: CniEnv, conf: NetConf, settings: Settings) -> None:
        # No API lookup: the pod may be gone, and removing what is not there is a
        # no-op. Both backends are asked, so a mode changed between ADD and DEL
        # still cleans up.
        for backend in self.backends.values():
            backend.remove(env)
        return None

    def check(self, env: CniEnv, conf: NetConf, settings: Settings) -> None:
        if cfg.version_tuple(conf["cniVersion"]) < (0, 4, 0):
            raise IncompatibleVersion("CHECK needs cniVersion 0.4.0 or later", f"config has {conf['cniVersion']}")
        if self._wants_redirect(env, settings):
            try:
                self.backends[settings.mode].verify(env, settings)
            except NetnsGone as exc:
                raise InvalidEnvironment("CNI_NETNS is not a network namespace", str(exc)) from exc
        return None

    def status(self, env: CniEnv, conf: NetConf, settings: Settings) -> None:
        _needs_1_1(conf, "STATUS")
        why = self.backends[settings.mode].unavailable()
        if why:
            raise NotAvailable(f"redirectMode {settings.mode} cannot serve ADD", why)
        if settings.kubeconfig:
            if not os.access(settings.kubeconfig, os.R_OK):
                raise NotAvailable("kubeconfig not readable", settings.kubeconfig)
        return None

    def gc(self, env: CniEnv, conf: NetConf, settings: Settings) -> None:
        """Drop what attachments the runtime no longer knows left behind (only
        eBPF mode keeps node-wide state; nftables state dies with the netns)."""
        _needs_1_1(conf, "GC")
        fields: dict[str, Any] = dict(conf)
        raw = fields.get("cni.dev/valid-attachments", fields.get("cni.dev/attachments", []))
        if not isinstance(raw, list):
            raise InvalidConfig("invalid cni.dev/valid-attachments", f"expected a list, got {raw!r}")
        valid = {(str(a.get("containerID", "")), str(a.get("ifname", ""))) for a in raw if isinstance(a, dict)}
        for backend in self.backends.values():
            backend.collect_garbage(valid)
        return None

    # -- helpers ------------------------------------------------------------------

    def _wants_redirect(self, env: CniEnv, settings: Settings) -> bool:
        """Is this an injected Kubernetes pod? Looks the pod up when it has to."""
        pod = env.pod
        if pod is None:  # not started by Kubernetes: nothing tells us to intercept
            return False
        namespace, name = pod
        if namespace in settings.exclude_namespaces:
            return False
        if not settings.kubeconfig:
            raise InvalidConfig(
                "kubernetes.kubeconfig is not set", "msm-cni reads the pod's annotations through the Kubernetes API"
            )
        from .kube import is_injected

        return is_injected(self.pod_source(settings.kubeconfig, namespace, name, settings.api_timeout))


def version(stdin: dict[str, Any] | None) -> VersionJson:
    """VERSION: answer in the asked version when we speak it, else our newest."""
    asked = (stdin or {}).get("cniVersion")
    current = asked if asked in cfg.SUPPORTED_VERSIONS else cfg.SUPPORTED_VERSIONS[-1]
    return {"cniVersion": str(current), "supportedVersions": list(cfg.SUPPORTED_VERSIONS)}


def passthrough(conf: NetConf) -> dict[str, Any]:
    """A chained plugin's ADD result: the previous result, unchanged but for
    the version it is stated in (the config's)."""
    result = dict(conf.get("prevResult") or {})
    result["cniVersion"] = conf["cniVersion"]
    return result


def _needs_1_1(conf: NetConf, command: str) -> None:
    if cfg.version_tuple(conf["cniVersion"]) < (1, 1, 0):
        raise IncompatibleVersion(f"{command} needs cniVersion 1.1.0 or later", f"config has {conf['cniVersion']}")


def _who(env: CniEnv) -> str:
    pod = env.pod
    return f"{pod[0]}/{pod[1]}" if pod else env.container_id


def _log(line: str) -> None:
    print(f"msm-cni: {line}", file=sys.stderr)

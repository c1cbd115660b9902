"""Parse and validate what the runtime hands the plugin: CNI_* variables and stdin.

Pure functions (a mapping and bytes in, values out) raising the ``errors`` tree,
so the unit tests need no process and no runtime.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, cast

from .errors import DecodeFailure, IncompatibleVersion, InvalidConfig, InvalidEnvironment
from .types import NetConf, RedirectMode

#: The spec versions this plugin speaks, oldest first. 0.3.0 is the first with
#: chaining (prevResult); CHECK needs 0.4.0; STATUS and GC need 1.1.0.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
#: What error answers carry when the config could not be read.
FALLBACK_VERSION = "1.0.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

DEFAULT_INTERCEPT_PORTS = (554,)
DEFAULT_REDIRECT_PORT = 8554
DEFAULT_PROXY_UID = 1337
DEFAULT_MODE: RedirectMode = "nftables"
DEFAULT_EXCLUDE_NAMESPACES = ("kube-system",)
DEFAULT_API_TIMEOUT = 5.0
#: eBPF mode: where links and maps are pinned (on bpffs); the cgroup the
#: programs attach to defaults to the cgroup v2 root ("").
DEFAULT_BPF_PIN_PATH = "/sys/fs/bpf/msm"
#: A conflist plugin entry is a few hundred bytes; prevResult for a pod with a
#: handful of interfaces a few KiB. 1 MiB is far beyond any honest config and
#: keeps a runaway writer from making us buffer without bound.
MAX_STDIN_BYTES = 1 << 20

# CNI spec: "Must start with an alphanumeric character, optionally followed by
# any combination of one or more alphanumeric characters, underscore, dot or hyphen."
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_IFNAME_BAD = re.compile(r"[/:\s]")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True, slots=True, kw_only=True)
class CniEnv:
    """The CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str]
    path: tuple[str, ...] = ()

    @property
    def pod(self) -> tuple[str, str] | None:
        """(namespace, name) when the runtime is Kubernetes (CNI_ARGS K8S_POD_*)."""
        namespace = self.args.get("K8S_POD_NAMESPACE", "")
        name = self.args.get("K8S_POD_NAME", "")
        return (namespace, name) if namespace and name else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The msm-specific part of the network config, defaults applied."""

    intercept_ports: tuple[int, ...] = DEFAULT_INTERCEPT_PORTS
    redirect_port: int = DEFAULT_REDIRECT_PORT
    proxy_uid: int = DEFAULT_PROXY_UID
    mode: RedirectMode = DEFAULT_MODE
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDE_NAMESPACES
    kubeconfig: str = ""
    api_timeout: float = DEFAULT_API_TIMEOUT
    cgroup_path: str = ""
    bpf_pin_path: str = DEFAULT_BPF_PIN_PATH


def parse_cni_args(raw: str) -> dict[str, str]:
    """``"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"`` -> a dict."""
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEnvironment("invalid CNI_ARGS", f"expected KEY=VALUE pairs separated by ';', got {pair!r}")
        out[key] = value
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Read and check the CNI_* variables the command needs (spec: code 4 names them)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise InvalidEnvironment("invalid CNI_COMMAND", f"expected one of {', '.join(COMMANDS)}, got {command!r}")
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    if command in ("VERSION", "STATUS", "GC"):
        return CniEnv(command=command, args=args, path=path)

    missing = [
        name
        for name in ("CNI_CONTAINERID", "CNI_IFNAME") + (("CNI_NETNS",) if command != "DEL" else ())
        if not environ.get(name)
    ]
    if missing:
        raise InvalidEnvironment(f"missing {', '.join(missing)}", f"CNI {command} needs {', '.join(missing)}")
    container_id = environ["CNI_CONTAINERID"]
    if not _CONTAINER_ID.match(container_id):
        raise InvalidEnvironment("invalid CNI_CONTAINERID", f"{container_id!r} is not a valid container ID")
    ifname = environ["CNI_IFNAME"]
    if len(ifname) > 15 or ifname in (".", "..") or _IFNAME_BAD.search(ifname):
        raise InvalidEnvironment("invalid CNI_IFNAME", f"{ifname!r} is not a valid interface name")
    return CniEnv(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        path=path,
    )


def decode_json(data: bytes, what: str = "network config") -> dict[str, Any]:
    """Bytes from stdin -> a JSON object, or code 6 (failed to decode content)."""
    if len(data) > MAX_STDIN_BYTES:
        raise DecodeFailure(f"{what} too large", f"{len(data)} bytes, at most {MAX_STDIN_BYTES}")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and integers past Python's digit limit;
        # RecursionError, nesting deeper than the decoder's stack.
        raise DecodeFailure(f"{what} is not valid JSON", str(exc)[:200]) from exc
    if not isinstance(value, dict):
        raise DecodeFailure(f"{what} is not a JSON object", f"got {type(value).__name__}")
    return value


def _port(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidConfig(f"invalid {field}", f"a TCP port is an integer 1-65535, got {value!r}")
    return value


def _abs_path(raw: dict[str, Any], field: str, default: str) -> str:
    """An absolute path without ``..`` (normalized), or '' when absent and the default is ''."""
    value = raw.get(field, default)
    if value == "" and default == "":
        return ""
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise InvalidConfig(f"invalid {field}", f"expected an absolute path, got {value!r}")
    return str(PurePosixPath(value))


def check_version(version: object) -> str:
    if not isinstance(version, str) or not version:
        raise InvalidConfig("invalid cniVersion", f"expected a version string, got {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(
            "incompatible CNI version", f"config has {version}, msm-cni supports {', '.join(SUPPORTED_VERSIONS)}"
        )
    return version


def parse_conf(raw: dict[str, Any]) -> tuple[NetConf, Settings]:
    """Validate a decoded network config (code 1 or 7), returning it and its settings."""
    check_version(raw.get("cniVersion"))
    for field in ("name", "type"):
        if not isinstance(raw.get(field), str) or not raw[field]:
            raise InvalidConfig(f"invalid {field}", f"the network config needs a non-empty string {field!r}")

    ports_raw = raw.get("interceptPorts", list(DEFAULT_INTERCEPT_PORTS))
    if not isinstance(ports_raw, list) or not ports_raw:
        raise InvalidConfig("invalid interceptPorts", f"expected a non-empty list of ports, got {ports_raw!r}")
    ports = tuple(sorted({_port(p, "interceptPorts") for p in ports_raw}))
    redirect_port = _port(raw.get("redirectPort", DEFAULT_REDIRECT_PORT), "redirectPort")
    if redirect_port in ports:
        raise InvalidConfig(
            "invalid interceptPorts", f"redirectPort {redirect_port} cannot also be intercepted (it would loop)"
        )
    uid = raw.get("proxyUid", DEFAULT_PROXY_UID)
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32 - 1:
        raise InvalidConfig("invalid proxyUid", f"expected a UID, got {uid!r}")
    mode = raw.get("redirectMode", DEFAULT_MODE)
    if mode not in ("nftables", "ebpf"):
        raise InvalidConfig("invalid redirectMode", f'expected "nftables" or "ebpf", got {mode!r}')
    excluded = raw.get("excludeNamespaces", list(DEFAULT_EXCLUDE_NAMESPACES))
    if not isinstance(excluded, list) or not all(isinstance(ns, str) for ns in excluded):
        raise InvalidConfig("invalid excludeNamespaces", f"expected a list of namespace names, got {excluded!r}")

    kube = raw.get("kubernetes", {})
    if not isinstance(kube, dict):
        raise InvalidConfig("invalid kubernetes", f"expected an object, got {kube!r}")
    kubeconfig = kube.get("kubeconfig", "")
    if not isinstance(kubeconfig, str):
        raise InvalidConfig("invalid kubernetes.kubeconfig", f"expected a path, got {kubeconfig!r}")
    timeout = kube.get("timeoutSeconds", DEFAULT_API_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise InvalidConfig("invalid kubernetes.timeoutSeconds", f"expected 0 < seconds <= 60, got {timeout!r}")

    cgroup_path = _abs_path(raw, "cgroupPath", "")
    pin_path = _abs_path(raw, "bpfPinPath", DEFAULT_BPF_PIN_PATH)
    if pin_path == "/":
        raise InvalidConfig("invalid bpfPinPath", "expected a directory on bpffs, got '/'")

    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise InvalidConfig("invalid prevResult", f"expected an object, got {type(prev).__name__}")

    settings = Settings(
        intercept_ports=ports,
        redirect_port=redirect_port,
        proxy_uid=uid,
        mode=mode,
        exclude_namespaces=tuple(excluded),
        kubeconfig=kubeconfig,
        api_timeout=float(timeout),
        cgroup_path=cgroup_path,
        bpf_pin_path=pin_path,
    )
    return cast(NetConf, raw), settings

"""The JSON crossing the plugin's boundaries, as TypedDicts.

Shapes only; validation lives in ``config`` (network config, environment) and
``kube`` (kubeconfig, pod). Field names follow the CNI spec and the Kubernetes
API reference exactly, hence the camelCase.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

RedirectMode = Literal["nftables", "ebpf"]


class KubernetesConf(TypedDict, total=False):
    kubeconfig: str  # path on the node, written by ``msm-cni install``
    timeoutSeconds: float  # per API request; default config.DEFAULT_API_TIMEOUT


class NetConf(TypedDict):
    """One plugin's entry of a conflist, as the runtime hands it over on stdin
    (with ``name``, ``cniVersion`` and ``prevResult`` filled in by the runtime)."""

    cniVersion: str
    name: str
    type: str
    kubernetes: NotRequired[KubernetesConf]
    interceptPorts: NotRequired[list[int]]  # default [554]
    redirectPort: NotRequired[int]  # default 8554, the stub
    proxyUid: NotRequired[int]  # default 1337, the stub's UID (exempt)
    redirectMode: NotRequired[RedirectMode]  # default "nftables"
    excludeNamespaces: NotRequired[list[str]]  # default ["kube-system"]
    prevResult: NotRequired[dict[str, Any]]
    runtimeConfig: NotRequired[dict[str, Any]]
    args: NotRequired[dict[str, Any]]


class CniErrorJson(TypedDict):
    cniVersion: str
    code: int
    msg: str
    details: str


class VersionJson(TypedDict):
    cniVersion: str
    supportedVersions: list[str]


class PodMetadata(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]


class Pod(TypedDict, total=False):
    """The part of a ``v1/Pod`` the plugin reads."""

    apiVersion: str
    kind: str
    metadata: PodMetadata
    spec: dict[str, Any]
    status: dict[str, Any]

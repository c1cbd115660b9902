"""Pods that hand media to the mesh directly get the proxy's media socket directory.

A Pod annotated ``media.mediastreamingmesh.io/memif: "true"`` (independently of the stub's
``sidecar.mediastreamingmesh.io/inject``) is patched with:

- a volume ``msm-media``: the node's ``/var/run/msm/media`` (hostPath, ``DirectoryOrCreate``),
  the directory where the node's proxy (whose DaemonSet mounts the same path) keeps
  ``proxy.sock``, its memif control socket;
- a mount of it at ``/run/msm/media`` in every app container (``spec.containers``) and in every
  native sidecar (an init container with ``restartPolicy: Always``, which runs beside the app).
  Ordinary init containers get nothing: they finish before the app starts, and a memif
  connection lives as long as its container. The injected stub gets nothing either;
- ``MSM_PROXY=unix:/run/msm/media/proxy.sock`` in the same containers' ``env``, unless the
  container's ``env`` already names ``MSM_PROXY`` (a value from ``envFrom`` is shadowed by an
  ``env`` entry, so a container that brings its own through ``envFrom`` must use ``env``);
- the proxy's group (``gid``, default :data:`MEDIA_GID`: the chart's proxy ``runAsGroup``) in the
  pod's ``securityContext.supplementalGroups``: the agent makes the directory 0770 and its
  sockets 0660, owned by the proxy's user and group, so an app of another user needs that group.
  Added only when missing; a ``gid`` of 0 adds no group (root's group is never handed out), and
  nor does a Windows pod (``spec.os.name``), which may not carry one.

Re-admission adds nothing twice: the volume, a mount at that path, the variable and the group
are each added only when missing. The annotation's value is ``"true"`` or ``"false"`` (case-insensitive);
anything else, a pod volume called ``msm-media`` that is not this hostPath, or another volume
already mounted at ``/run/msm/media`` is refused with a one-line :class:`ReviewError` (400).

Pure functions, as :mod:`msm.webhook.review` (which calls :func:`media_patch`): nothing here
does I/O, and nothing here imports the review module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from msm.webhook.errors import ReviewError

MEDIA_KEY = "media.mediastreamingmesh.io/memif"
MEDIA_VOLUME = "msm-media"
MEDIA_HOST_DIR = "/var/run/msm/media"     # on the node; the proxy DaemonSet mounts the same path
MEDIA_DIR = "/run/msm/media"              # inside pods
PROXY_ENV = "MSM_PROXY"
PROXY_SOCKET = f"unix:{MEDIA_DIR}/proxy.sock"
MEDIA_GID = 10001                         # the chart's proxy podSecurityContext.runAsGroup
MAX_GID = 2147483647                      # what the API server accepts in supplementalGroups


class PatchOp(TypedDict):
    op: Literal["add"]
    path: str
    value: Any


def media_volume() -> dict[str, Any]:
    return {"name": MEDIA_VOLUME, "hostPath": {"path": MEDIA_HOST_DIR, "type": "DirectoryOrCreate"}}


def wants_media(pod: dict[str, Any]) -> bool:
    """The memif annotation says ``"true"``; ``"false"`` or no annotation is False; anything else is refused."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(MEDIA_KEY)
    if value is None:
        return False
    if not isinstance(value, str) or value.strip().lower() not in ("true", "false"):
        shown = repr(value[:40]) if isinstance(value, str) else "not a string"
        raise ReviewError(f'annotation {MEDIA_KEY} must be "true" or "false", got {shown}')
    return value.strip().lower() == "true"


def media_patch(pod: dict[str, Any], before: Sequence[PatchOp], *, skip: str,
                gid: int = MEDIA_GID) -> tuple[list[PatchOp], str]:
    """The operations that give ``pod`` the media socket directory and the proxy's group ``gid``,
    to follow ``before`` (the stub's, already decided) in the same JSON Patch, and a note for the
    audit annotation ("" when the pod does not ask). Containers named ``skip`` (the stub) get nothing."""
    if not wants_media(pod):
        return [], ""
    patched = apply_adds(pod, before)   # what the API server will have when our operations run
    spec = patched.get("spec")
    if not isinstance(spec, dict):
        return [], "; memif: no pod spec"
    ops: list[PatchOp] = []
    ops.extend(_volume_ops(spec))
    ops.extend(_group_ops(spec, gid))
    for field in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(field) or []):
            if not isinstance(container, dict) or container.get("name") == skip:
                continue
            if field == "initContainers" and container.get("restartPolicy") != "Always":
                continue
            ops.extend(_container_ops(container, f"/spec/{field}/{index}", f"{field}[{index}]"))
    return ops, "; memif: mounted" if ops else "; memif: already mounted"


def _volume_ops(spec: dict[str, Any]) -> list[PatchOp]:
    volumes = spec.get("volumes")
    if not isinstance(volumes, list):
        return [_add("/spec/volumes", [media_volume()])]
    for volume in volumes:
        if isinstance(volume, dict) and volume.get("name") == MEDIA_VOLUME:
            if volume != media_volume():
                raise ReviewError(f"the pod already has a volume named {MEDIA_VOLUME!r} that is not the "
                                  f"proxy's {MEDIA_HOST_DIR}, which {MEDIA_KEY} needs")
            return []
    return [_add("/spec/volumes/-", media_volume())]


def _group_ops(spec: dict[str, Any], gid: int) -> list[PatchOp]:
    """``gid`` into ``securityContext.supplementalGroups`` unless there (a shape the API server
    would refuse anyway is left alone: it is not ours to refuse)."""
    system = spec.get("os")
    if gid <= 0 or (isinstance(system, dict) and system.get("name") == "windows"):
        return []
    context = spec.get("securityContext")
    if context is None:
        return [_add("/spec/securityContext", {"supplementalGroups": [gid]})]
    if not isinstance(context, dict):
        return []
    groups = context.get("supplementalGroups")
    if groups is None:
        return [_add("/spec/securityContext/supplementalGroups", [gid])]
    if not isinstance(groups, list) or gid in groups:
        return []
    return [_add("/spec/securityContext/supplementalGroups/-", gid)]


def _container_ops(container: dict[str, Any], path: str, where: str) -> list[PatchOp]:
    ops: list[PatchOp] = []
    mounts = container.get("volumeMounts")
    mount = {"name": MEDIA_VOLUME, "mountPath": MEDIA_DIR}
    if not isinstance(mounts, list):
        ops.append(_add(f"{path}/volumeMounts", [mount]))
    else:
        at_dir = [m for m in mounts if isinstance(m, dict) and str(m.get("mountPath", "")).rstrip("/") == MEDIA_DIR]
        if any(m.get("name") != MEDIA_VOLUME for m in at_dir):
            raise ReviewError(f"request.object.spec.{where} already mounts another volume at {MEDIA_DIR}, "
                              f"where {MEDIA_KEY} puts the proxy's socket")
        if not at_dir:
            ops.append(_add(f"{path}/volumeMounts/-", mount))
    env = container.get("env")
    variable = {"name": PROXY_ENV, "value": PROXY_SOCKET}
    if not isinstance(env, list):
        ops.append(_add(f"{path}/env", [variable]))
    elif not any(isinstance(e, dict) and e.get("name") == PROXY_ENV for e in env):
        ops.append(_add(f"{path}/env/-", variable))
    return ops


def apply_adds(document: dict[str, Any], ops: Sequence[PatchOp]) -> dict[str, Any]:
    """A copy of ``document`` with JSON Patch ``add`` operations applied (only what the webhook
    emits: object members and appends with ``-``)."""
    result = copy.deepcopy(document)
    for op in ops:
        *parents, last = [_unescape(token) for token in op["path"].split("/")[1:]]
        node: Any = result
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        if isinstance(node, list) and last == "-":
            node.append(copy.deepcopy(op["value"]))
        elif isinstance(node, list):
            node.insert(int(last), copy.deepcopy(op["value"]))
        else:
            node[last] = copy.deepcopy(op["value"])
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _add(path: str, value: Any) -> PatchOp:
    return {"op": "add", "path": path, "value": value}

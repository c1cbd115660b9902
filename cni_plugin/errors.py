"""Every error the plugin can answer with, its CNI error code, and the one
function that turns an error into the CNI error JSON.

The plugin's errors are leaves of msm's one tree (``msm.sdk.errors``):
:class:`CniError` is an :class:`~msm.sdk.errors.MsmError`, and each leaf
carries its CNI code as ``cni_code`` (``code`` is the same number).

    MsmError                       (msm.sdk.errors)
    └── CniError                   999 unless a leaf says otherwise
        ├── IncompatibleVersion    1
        ├── InvalidEnvironment     4   a CNI_* variable is missing or malformed
        ├── NetnsGone              3   the netns is gone: DEL ignores it, ADD and CHECK
        │                              answer InvalidEnvironment
        ├── IoFailure              5
        ├── DecodeFailure          6   stdin is not a JSON object
        ├── InvalidConfig          7   the network config (or its kubeconfig) is wrong
        ├── TryAgainLater          11  e.g. an unreachable API server
        ├── NotAvailable           50  STATUS: cannot serve ADD
        ├── PodLookupFailed        100
        ├── RedirectFailed         101
        ├── CheckFailed            102
        ├── EbpfUnavailable        103
        ├── InternalError          199 a bug: an exception nothing below expected
        └── InstallError           5   ``msm-cni install`` cannot do its job (exit 1)

Lower layers (config parsing, the Kubernetes client, the nft runner, the eBPF
loader) raise these; :func:`error_json` is the one function that makes the CNI
error JSON ``{"cniVersion", "code", "msg", "details"}``, from any exception:
an :class:`MsmError` answers with its ``cni_code`` (a ``ConfigError`` 7, a
``KubeError`` 11...), anything else is a bug and answers :data:`INTERNAL`.
Foreign exceptions (``OSError``, ``json.JSONDecodeError``,
``http.client.HTTPException``...) are translated where they happen, with
``raise ... from exc``, never passed up raw.

Codes 1-99 are the spec's well-known codes (CNI spec, "Well-known Error Codes");
100 and up are ours.

This module and ``msm.sdk.errors`` are all the plugin needs of msm: the
installer copies both onto the node (see ``msm.cni_plugin.installer``), so
neither may import anything beyond the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msm.sdk.errors import MsmError

if TYPE_CHECKING:
    from .types import CniErrorJson

# Well-known codes (CNI spec 1.0/1.1).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD (spec 1.1)

# Plugin-specific codes.
POD_LOOKUP_FAILED = 100  # the API server answered, but not with a usable pod
REDIRECT_FAILED = 101  # installing or removing the redirect failed
CHECK_FAILED = 102  # CHECK: the redirect is missing or not what ADD installed
EBPF_UNAVAILABLE = 103  # redirectMode "ebpf" cannot run on this node
INTERNAL = 199  # a bug: an exception nothing below the boundary expected


class CniError(MsmError):
    """An answer the runtime gets as ``{"cniVersion", "code", "msg", "details"}``."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    @property
    def code(self) -> int:
        """The CNI error code (``cni_code``)."""
        return self.cni_code

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CniError):
    cni_code = INCOMPATIBLE_VERSION


class InvalidEnvironment(CniError):
    """A CNI_* variable is missing or malformed; the message names it."""

    cni_code = INVALID_ENVIRONMENT


class IoFailure(CniError):
    cni_code = IO_FAILURE


class DecodeFailure(CniError):
    """Stdin is not JSON (or not a JSON object)."""

    cni_code = DECODE_FAILURE


class InvalidConfig(CniError):
    """The network configuration (or the kubeconfig it names) is wrong."""

    cni_code = INVALID_CONFIG


class TryAgainLater(CniError):
    """A transient condition, such as an unreachable API server."""

    cni_code = TRY_AGAIN_LATER


class NotAvailable(CniError):
    cni_code = NOT_AVAILABLE


class PodLookupFailed(CniError):
    cni_code = POD_LOOKUP_FAILED


class RedirectFailed(CniError):
    cni_code = REDIRECT_FAILED


class CheckFailed(CniError):
    cni_code = CHECK_FAILED


class EbpfUnavailable(CniError):
    cni_code = EBPF_UNAVAILABLE


class InternalError(CniError):
    cni_code = INTERNAL


class NetnsGone(CniError):
    """The network namespace does not exist (any more). Not an answer by itself:
    DEL treats it as nothing to remove, ADD and CHECK turn it into an error."""

    cni_code = UNKNOWN_CONTAINER


class InstallError(CniError):
    """The installer cannot do its job (a one-line message, exit status 1)."""

    cni_code = IO_FAILURE


def error_json(error: BaseException, version: str) -> CniErrorJson:
    """The CNI error JSON that answers ``error``: the one translation to CNI.

    A :class:`CniError` keeps its message and details; any other
    :class:`MsmError` answers with its ``cni_code`` and reason; anything else is
    a bug of ours and answers :data:`INTERNAL` naming the exception type.
    """
    if isinstance(error, CniError):
        return {"cniVersion": version, "code": error.cni_code, "msg": error.msg, "details": error.details}
    if isinstance(error, MsmError):
        return {"cniVersion": version, "code": error.cni_code, "msg": error.reason, "details": ""}
    return {"cniVersion": version, "code": INTERNAL, "msg": "msm-cni internal error",
            "details": f"{type(error).__name__}: {error}"}

"""Every error the plugin can answer with, and its CNI error code.

The tree is the single place codes are chosen. Lower layers (config parsing, the
Kubernetes client, the nft runner, the eBPF loader) raise these; ``main`` is the
one boundary that turns them into the CNI error JSON on stdout and a non-zero
exit status. Foreign exceptions (``OSError``, ``json.JSONDecodeError``,
``http.client.HTTPException``...) are translated where they happen, with
``raise ... from exc``, never passed up raw.

Codes 1-99 are the spec's well-known codes (CNI spec, "Well-known Error Codes");
100 and up are ours.
"""

from __future__ import annotations

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


class CniError(Exception):
    """An answer the runtime gets as ``{"cniVersion", "code", "msg", "details"}``."""

    code = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CniError):
    code = INCOMPATIBLE_VERSION


class InvalidEnvironment(CniError):
    """A CNI_* variable is missing or malformed; the message names it."""

    code = INVALID_ENVIRONMENT


class IoFailure(CniError):
    code = IO_FAILURE


class DecodeFailure(CniError):
    """Stdin is not JSON (or not a JSON object)."""

    code = DECODE_FAILURE


class InvalidConfig(CniError):
    """The network configuration (or the kubeconfig it names) is wrong."""

    code = INVALID_CONFIG


class TryAgainLater(CniError):
    """A transient condition, such as an unreachable API server."""

    code = TRY_AGAIN_LATER


class NotAvailable(CniError):
    code = NOT_AVAILABLE


class PodLookupFailed(CniError):
    code = POD_LOOKUP_FAILED


class RedirectFailed(CniError):
    code = REDIRECT_FAILED


class CheckFailed(CniError):
    code = CHECK_FAILED


class EbpfUnavailable(CniError):
    code = EBPF_UNAVAILABLE


class InternalError(CniError):
    code = INTERNAL


class NetnsGone(Exception):
    """The network namespace does not exist (any more). Not an answer by itself:
    DEL treats it as nothing to remove, ADD and CHECK turn it into an error."""


class InstallError(Exception):
    """The installer cannot do its job (a one-line message, exit status 1)."""

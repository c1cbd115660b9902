"""The webhook's exceptions, in one place.

A caller's fault is a :class:`WebhookError` carrying what to tell it; nothing here raises on
bad input without saying who is at fault.

    MsmError                       (sdk.errors)
    └── WebhookError
        ├── ReviewError            the API server (or whoever POSTs) sent a bad AdmissionReview;
        │                          .status is the HTTP status to answer (400)
        ├── ConfigError            a bad flag or environment value (also a ValueError)
        └── CertificateError       the TLS certificate or key cannot be read or used
"""

from __future__ import annotations

from msm.sdk.errors import MsmError


class WebhookError(MsmError):
    """Base class of the webhook's errors."""


class ReviewError(WebhookError):
    """A malformed, oversized or unsupported AdmissionReview; answered with ``status``."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ConfigError(WebhookError, ValueError):
    """An injection setting that cannot work (empty image, control plane without a port...)."""


class CertificateError(WebhookError):
    """The certificate or key file is missing, unreadable, not PEM, or they do not match."""

"""The webhook's exceptions, in one place: leaves of msm's one tree (``msm.sdk.errors``).

A caller's fault is a :class:`WebhookError` carrying what to tell it; nothing here raises on
bad input without saying who is at fault. The HTTP status that answers an error is the tree's
``http_status`` (400 for every webhook error unless raised with another ``status``);
:func:`msm.webhook.review.rejection` is the one function that turns any error into the HTTP
answer (status and ``v1 Status`` body).

    MsmError                       (msm.sdk.errors)
    ├── ConfigError                (msm.sdk.errors, re-exported here) a bad flag, environment
    │                              value or injection setting: exit status 2
    └── WebhookError               HTTP 400
        ├── ReviewError            the API server (or whoever POSTs) sent a bad AdmissionReview
        └── CertificateError       the TLS certificate or key cannot be read or used
"""

from __future__ import annotations

from msm.sdk.errors import ConfigError, MsmError

__all__ = ["CertificateError", "ConfigError", "ReviewError", "WebhookError"]


class WebhookError(MsmError):
    """Base class of the webhook's own errors: the sender's fault, answered with HTTP 400."""

    status = 400


class ReviewError(WebhookError):
    """A malformed, oversized or unsupported AdmissionReview; answered with its ``http_status``."""


class CertificateError(WebhookError):
    """The certificate or key file is missing, unreadable, not PEM, or they do not match."""

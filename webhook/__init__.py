"""The mutating admission webhook: injects the msm stub sidecar into annotated Pods.

``review`` decides (a pure function, AdmissionReview bytes in, response out), ``server`` is the
thin aiohttp HTTPS layer with certificate reload, ``main`` the ``msm-webhook`` command.
"""

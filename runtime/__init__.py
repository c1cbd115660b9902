"""Runtime pieces every msm component shares, written once.

stdlib and grpc only (an import-linter contract enforces it): back-off loops,
request/reply correlation, gRPC server start-up and stop, HOST:PORT parsing, and
the gRPC boundary of the exception tree in ``msm.sdk.errors``.
"""

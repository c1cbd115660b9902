"""Runtime pieces every msm component shares, written once.

stdlib, grpc and (for the metrics endpoint) aiohttp and prometheus-client only; of msm,
only the exception tree (an import-linter contract enforces it): back-off loops,
request/reply correlation, gRPC server start-up and stop, HOST:PORT parsing, the
gRPC boundary of the exception tree in ``msm.sdk.errors``, and ``/metrics`` serving.

- ``backoff.Backoff``: exponential back-off with jitter and a cap, for reconnect loops;
- ``correlator.Correlator``: replies matched to requests by id, bounded, with timeout and ``fail_all``;
- ``grpcserver.GrpcServer``: a ``grpc.aio`` server on HOST:PORT; a failed bind is a one-line ``ListenError``;
- ``hostport.parse_host_port``: the one HOST:PORT parser (``ConfigError`` on bad input);
- ``grpcutil.abort`` / ``grpcutil.error_from_rpc``: ``MsmError`` to a gRPC status and back;
- ``process``: log-level flags and the SIGINT/SIGTERM stop event of every entry point;
- ``metrics.MetricsServer``: ``GET /metrics`` and ``/healthz`` for one Prometheus registry.
"""

"""Fuzz the MCM connection JSON reader (``msm.sdk.mcm_config.parse_connection``).

Only :class:`~msm.sdk.errors.ConfigError` is expected, with a one-line message. A document that
parses, for either direction, must answer its computed properties (frame size, frame period,
payload size) and round-trip: ``parse_connection(config.to_dict())`` is the same value, and so is
the JSON text of that dict.
"""

from __future__ import annotations

import json

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.sdk.errors import ConfigError
    from msm.sdk.mcm_config import ConnectionConfig, parse_connection

NAME = "connection_json"
KNOWN: tuple[fuzzlib.KnownBug, ...] = (
)


def check(config: ConnectionConfig) -> None:
    if config.payload_size < 1 or config.frame_size < 1:
        raise AssertionError(f"empty buffers from {config!r:.300}")
    period = config.frame_period_ns
    if period is not None and period < 1:
        raise AssertionError(f"period {period} from {config!r:.300}")
    document = config.to_dict()
    for again in (parse_connection(document, direction=config.direction),
                  parse_connection(json.dumps(document), direction=config.direction)):
        if again != config:
            raise AssertionError(f"round trip changed {config!r:.300} into {again!r:.300}")


def test_one(data: bytes) -> None:
    try:
        for direction in ("tx", "rx"):
            try:
                config = parse_connection(data, direction=direction)  # type: ignore[arg-type]
            except ConfigError as exc:
                if "\n" in str(exc) or not str(exc):
                    raise AssertionError(f"not a one-line error: {str(exc)!r:.300}") from exc
                continue
            check(config)
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, ["mcm/*.json"]))

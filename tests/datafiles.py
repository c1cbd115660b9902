"""Recorded fixtures under ``tests/data``: one loader for every test."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def load(name: str) -> bytes:
    """The bytes of ``tests/data/<name>``, e.g. ``load("rtsp/gst_rtspsrc_tcp.rtsp")``."""
    return (DATA_DIR / name).read_bytes()

"""Loss repair for the node-to-node leg: SMPTE 2022-1 FEC, NACK/RTX (RFC 4585/4588), SMPTE 2022-7.

The FEC codecs and the 2022-7 de-duplicator come in two identical twins: C
(``msm.ext.fec``, for the native engine's packet rates) and pure Python (:mod:`.fec`,
:mod:`.seamless`). :func:`fec_encoder`, :func:`fec_decoder` and :func:`dedup` give the C one
when it is built and the Python one otherwise (or when ``native=False``). NACK/RTX
(:mod:`.rtx`) is Python only: its traffic is a few packets per loss.
"""

from __future__ import annotations

from typing import Protocol

from msm.ext import NativeUnavailable
from msm.ext import fec as native_fec
from msm.rtp_proxy.repair import fec as py_fec
from msm.rtp_proxy.repair import seamless as py_dedup
from msm.sdk.errors import ConfigError

__all__ = ["DedupLike", "FecDecoderLike", "FecEncoderLike", "dedup", "fec_decoder", "fec_encoder"]


class FecEncoderLike(Protocol):
    def push(self, packet: py_fec.Packet) -> list[tuple[int, bytes]]: ...
    def stats(self) -> dict[str, int]: ...


class FecDecoderLike(Protocol):
    window: int

    def media(self, packet: py_fec.Packet) -> int: ...
    def fec(self, packet: py_fec.Packet) -> int: ...
    def recovered(self) -> list[bytes]: ...
    def stats(self) -> dict[str, int]: ...


class DedupLike(Protocol):
    def push(self, seq: int) -> int: ...
    def stats(self) -> dict[str, int]: ...


def fec_encoder(columns: int, rows: int, *, payload_type: int = 96, ssrc: int = 0, max_packet: int = 1500,
                native: bool | None = None) -> FecEncoderLike:
    """A 2022-1 encoder: C when built (``native=None``), or as ``native`` says (True: C or raise);
    bad settings raise :class:`ConfigError`."""
    if native is not False:
        try:
            return native_fec.FecEncoder(columns, rows, payload_type=payload_type, ssrc=ssrc, max_packet=max_packet)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except NativeUnavailable:
            if native:
                raise
    return py_fec.FecEncoder(columns, rows, payload_type=payload_type, ssrc=ssrc, max_packet=max_packet)


def fec_decoder(columns: int, rows: int, *, max_packet: int = 1500, native: bool | None = None) -> FecDecoderLike:
    """A 2022-1 decoder: C when built (``native=None``), or as ``native`` says (True: C or raise);
    bad settings raise :class:`ConfigError`."""
    if native is not False:
        try:
            return native_fec.FecDecoder(columns, rows, max_packet=max_packet)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except NativeUnavailable:
            if native:
                raise
    return py_fec.FecDecoder(columns, rows, max_packet=max_packet)


def dedup(window: int = 1024, *, native: bool | None = None) -> DedupLike:
    """A 2022-7 de-duplicator: C when built (``native=None``), or as ``native`` says."""
    if native is not False:
        try:
            return native_fec.Dedup(window)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except NativeUnavailable:
            if native:
                raise
    return py_dedup.Dedup(window)

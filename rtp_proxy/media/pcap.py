"""UDP datagrams out of a pcap or pcapng file, with their capture times in ns (stdlib only).

Enough of both formats for what dumpcap, tshark and tcpdump write: pcap in
either byte order with micro- or nanosecond times; pcapng section headers,
interface descriptions (link type, ``if_tsresol``) and enhanced packet blocks.
Link types: Ethernet (with 802.1Q tags), BSD loopback, Linux cooked v1 and v2,
raw IPv4/IPv6. IPv4 and IPv6 (no extension headers) carrying UDP; fragments
after the first are left out.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from typing import BinaryIO

from msm.sdk.errors import ConfigError

__all__ = ["PcapError", "gso_segments", "udp_datagrams"]

#: A block or record larger than this is not a capture of ours (a jumbo frame is 9 kB;
#: pcapng's own limit is far larger): refusing it bounds what one read may allocate.
MAX_BLOCK = 1 << 20

#: Datagrams larger than this are looked at as possible GSO trains (a single packet may be
#: larger too, up to ST 2110's extended 8,960 bytes: gso_segments then leaves it whole).
MAX_SINGLE = 1500

_ETHERNET, _NULL, _RAW, _RAW2, _LOOP, _SLL, _IPV4, _IPV6, _SLL2 = 1, 0, 101, 12, 108, 113, 228, 229, 276


class PcapError(ConfigError):
    """The file is not a capture this reader understands, or it is cut short."""


def _ip(data: bytes, off: int) -> tuple[bytes, int, bytes, int] | None:
    """``(packed source, destination port, UDP payload, UDP length)`` of an IP packet at ``off``, or ``None``."""
    if len(data) < off + 20:
        return None
    version = data[off] >> 4
    if version == 4:
        ihl = (data[off] & 0x0F) * 4
        if data[off + 9] != 17 or struct.unpack_from("!H", data, off + 6)[0] & 0x1FFF:
            return None
        src = data[off + 12:off + 16]
        udp = off + ihl
    elif version == 6:
        if len(data) < off + 40 or data[off + 6] != 17:
            return None
        src = data[off + 8:off + 24]
        udp = off + 40
    else:
        return None
    if len(data) < udp + 8:
        return None
    _sport, dport, ulen = struct.unpack_from("!HHH", data, udp)
    return src, dport, data[udp + 8:udp + ulen], ulen - 8


def _link(linktype: int, data: bytes) -> int | None:
    """Where the IP header starts under this link layer, or ``None`` (not IP)."""
    if linktype == _ETHERNET:
        off, ethertype = 14, struct.unpack_from("!H", data, 12)[0] if len(data) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(data) >= off + 4:
            ethertype, off = struct.unpack_from("!H", data, off + 2)[0], off + 4
        return off if ethertype in (0x0800, 0x86DD) else None
    if linktype in (_NULL, _LOOP):
        return 4
    if linktype == _SLL:
        return 16
    if linktype == _SLL2:
        return 20
    if linktype in (_RAW, _RAW2, _IPV4, _IPV6):
        return 0
    return None


def _read(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise PcapError(f"the capture is cut short in {what}")
    return data


def _pcap(f: BinaryIO, head: bytes) -> Iterator[tuple[int, int, bytes]]:
    magic = head[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    rest = _read(f, 20, "the file header")
    linktype = struct.unpack(endian + "I", rest[16:20])[0] & 0xFFFF
    record = struct.Struct(endian + "IIII")
    while True:
        hdr = f.read(16)
        if len(hdr) < 16:
            return
        sec, frac, incl, _orig = record.unpack(hdr)
        if incl > MAX_BLOCK:
            raise PcapError(f"a record of {incl} bytes: not a capture this reader understands")
        yield sec * 1_000_000_000 + (frac if nano else frac * 1000), linktype, _read(f, incl, "a record")


def _tsresol(options: bytes, endian: str) -> int:
    """Timestamp units per second from an interface's ``if_tsresol`` option (default: microseconds)."""
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[off + 4]
            return int(2 ** (v & 0x7F) if v & 0x80 else 10 ** v)
        off += 4 + (length + 3) // 4 * 4
    return 1_000_000


def _pcapng(f: BinaryIO, head: bytes) -> Iterator[tuple[int, int, bytes]]:
    endian = "<"
    interfaces: list[tuple[int, int]] = []
    block_type, block = 0x0A0D0D0A, b""
    first = True
    while True:
        if first:
            raw = head + _read(f, 8, "a block header")
            bom = raw[8:12]
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            first = False
        else:
            raw = f.read(8)
            if len(raw) < 8:
                return
        block_type, total = struct.unpack(endian + "II", raw[:8])
        if total < 12 or total > MAX_BLOCK or total % 4:
            raise PcapError(f"a pcapng block of {total} bytes: not a capture this reader understands")
        block = raw[8:] + _read(f, total - len(raw), "a block")
        body = block[:-4]
        if block_type == 0x0A0D0D0A:
            interfaces = []
        elif block_type == 1 and len(body) >= 8:
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            interfaces.append((linktype, _tsresol(body[8:], endian)))
        elif block_type == 6 and len(body) >= 20:
            iface, high, low, incl, _orig = struct.unpack_from(endian + "IIIII", body, 0)
            if iface >= len(interfaces):
                raise PcapError(f"a packet of interface {iface}, which the capture never described")
            linktype, per_second = interfaces[iface]
            units = (high << 32) | low
            yield units * 1_000_000_000 // per_second, linktype, body[20:20 + incl]


def gso_segments(payload: bytes) -> list[bytes]:
    """A UDP GSO train cut back into its RTP packets, or ``[payload]`` if it is not one.

    A capture on the sending host (loopback, a veth) sees a GSO train as one datagram:
    RTP packets back to back, all of one size but the last. It is recognised by a
    second RTP header of the same SSRC with the next sequence number, and cut at
    that size if every piece continues the sequence.
    """
    if len(payload) < 24 or payload[0] >> 6 != 2:
        return [payload]
    seq, ssrc = int.from_bytes(payload[2:4], "big"), payload[8:12]
    at = payload.find(ssrc, 20)
    while at != -1:
        size = at - 8
        piece = payload[size:size + 12]
        if piece[0] >> 6 == 2 and int.from_bytes(piece[2:4], "big") == (seq + 1) & 0xFFFF:
            parts = [payload[i:i + size] for i in range(0, len(payload), size)]
            if all(len(p) >= 12 and p[0] >> 6 == 2 and p[8:12] == ssrc
                   and int.from_bytes(p[2:4], "big") == (seq + k) & 0xFFFF for k, p in enumerate(parts)):
                return parts
        at = payload.find(ssrc, at + 1)
    return [payload]


def udp_datagrams(path: str, port: int | None = None) -> Iterator[tuple[int, str, bytes, int]]:
    """``(time ns, source address, UDP payload as captured, UDP payload length)`` of each datagram to ``port``."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, the generator may be abandoned
    except OSError as exc:
        raise PcapError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        head = f.read(4)
        if head in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
            records = _pcap(f, head)
        elif head == b"\x0a\x0d\x0d\x0a":
            records = _pcapng(f, head)
        else:
            raise PcapError(f"{path} is not a pcap or pcapng file")
        names: dict[bytes, str] = {}   # packed -> text; a capture has few senders (bounded below)
        for t, linktype, data in records:
            off = _link(linktype, data)
            udp = None if off is None else _ip(data, off)
            if udp is not None and (port is None or udp[1] == port):
                name = names.get(udp[0])
                if name is None:
                    if len(names) >= 1024:
                        names.clear()
                    name = names[udp[0]] = str(ipaddress.ip_address(udp[0]))
                if len(udp[2]) == udp[3] > MAX_SINGLE:   # whole and larger than one packet: a GSO train?
                    for part in gso_segments(udp[2]):
                        yield t, name, part, len(part)
                else:
                    yield t, name, udp[2], udp[3]

"""SMPTE 2022-1 FEC and 2022-7 de-duplication: the C codecs (msm.ext.fec) and their Python twins
(msm.rtp_proxy.repair) give the same packets and counters; what XOR can recover is recovered byte
for byte; the header is 2022-1's; bad input is counted, never raised."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from msm.rtp_proxy import repair
from msm.rtp_proxy.repair import fec as py_fec
from msm.rtp_proxy.repair import seamless as py_dedup
from msm.sdk.errors import ConfigError

try:
    from msm.ext import fec as native

    native.load()
    NATIVE_REASON = None
except Exception as exc:  # noqa: BLE001 - the reason is printed by the skip
    NATIVE_REASON = str(exc)

needs_native = pytest.mark.skipif(NATIVE_REASON is not None, reason=f"C codecs not built: {NATIVE_REASON}")
KINDS = [False] if NATIVE_REASON else [False, True]


def media(seq: int, size: int, *, rng: random.Random, ssrc: int = 0x1234, pt: int = 33, marker: bool = False,
          first: int = 0x80) -> bytes:
    head = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF, (seq * 3003) & 0xFFFFFFFF, ssrc)
    return head + rng.randbytes(size)


def seq_of(pkt: bytes) -> int:
    return int(struct.unpack("!H", pkt[2:4])[0])


def encode(enc: repair.FecEncoderLike, packets: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(index of the media packet it left with, kind, FEC packet)."""
    return [(i, kind, f) for i, p in enumerate(packets) for kind, f in enc.push(p)]


def run_decoder(dec: repair.FecDecoderLike, events: list[tuple[str, bytes]]) -> tuple[list[int], list[bytes]]:
    codes, out = [], []
    for what, pkt in events:
        codes.append(dec.media(pkt) if what == "m" else dec.fec(pkt))
        out += dec.recovered()
    return codes, out


def in_order(packets: list[bytes], fecs: list[tuple[int, int, bytes]], lost: set[int]) -> list[tuple[str, bytes]]:
    """Media (less ``lost``) and FEC as they were sent: a FEC packet right after the media packet it left with."""
    events = []
    for i, p in enumerate(packets):
        if seq_of(p) not in lost:
            events.append(("m", p))
        events += [("f", f) for j, _, f in fecs if j == i]
    return events


def stream(rng: random.Random, start: int, count: int, *, varied: bool) -> list[bytes]:
    return [media(start + i, rng.randrange(1, 200) if varied else 188 * 7, rng=rng, marker=rng.random() < 0.2,
                  pt=rng.choice((33, 96)) if varied else 33, first=rng.choice((0x80, 0xA0, 0x83)) if varied else 0x80)
            for i in range(count)]


def events_for(rng: random.Random, packets: list[bytes], fecs: list[tuple[int, int, bytes]], loss: float,
               fec_loss: float, shuffle: int) -> tuple[list[tuple[str, bytes]], set[int]]:
    """Media and FEC in send order, some dropped, each moved up to ``shuffle`` places."""
    events: list[tuple[float, str, bytes]] = []
    dropped = set()
    for i, p in enumerate(packets):
        if rng.random() < loss:
            dropped.add(seq_of(p))
        else:
            events.append((i + rng.uniform(0, shuffle), "m", p))
    for i, _kind, f in fecs:
        if rng.random() >= fec_loss:
            events.append((i + 0.5 + rng.uniform(0, shuffle), "f", f))
    events.sort(key=lambda e: e[0])
    return [(what, pkt) for _, what, pkt in events], dropped


@needs_native
@settings(max_examples=80)
@given(seed=st.integers(0, 2**32), columns=st.integers(1, 8), rows=st.integers(0, 6), count=st.integers(1, 300),
       start=st.integers(0, 65535), loss=st.sampled_from([0.0, 0.02, 0.1, 0.3]), fec_loss=st.sampled_from([0.0, 0.1]),
       shuffle=st.integers(0, 12), varied=st.booleans())
def test_c_and_python_twins_agree(seed: int, columns: int, rows: int, count: int, start: int, loss: float,
                                  fec_loss: float, shuffle: int, varied: bool) -> None:
    rng = random.Random(seed)
    packets = stream(rng, start, count, varied=varied)
    fecs_c = encode(native.FecEncoder(columns, rows, ssrc=7), packets)
    fecs_py = encode(py_fec.FecEncoder(columns, rows, ssrc=7), packets)
    assert fecs_c == fecs_py
    events, dropped = events_for(rng, packets, fecs_c, loss, fec_loss, shuffle)
    c_dec, py_dec = native.FecDecoder(columns, rows), py_fec.FecDecoder(columns, rows)
    c_codes, c_out = run_decoder(c_dec, events)
    py_codes, py_out = run_decoder(py_dec, events)
    assert (c_codes, c_out) == (py_codes, py_out)
    assert c_dec.stats() == py_dec.stats()
    lost_for_good = c_dec.stats()["unrecoverable"]
    event(f"recovered: {'some' if c_out else 'none'}; unrecoverable: {'some' if lost_for_good else 'none'}")
    by_seq = {seq_of(p): p for p in packets}
    # Every recovered packet is the sent one, byte for byte (the SSRC is the stream's): a lost one,
    # or one reordered behind the FEC that rebuilt it (then its late original is a copy, code 1).
    assert all(r == by_seq[seq_of(r)] for r in c_out)
    early = {seq_of(r) for r in c_out} - dropped
    assert sum(1 for (what, p), code in zip(events, c_codes, strict=True) if what == "m" and code == 1) == len(early)
    assert len({seq_of(r) for r in c_out}) == len(c_out) == c_dec.stats()["recovered"]


@needs_native
def test_batches_are_the_packet_calls_in_one() -> None:
    rng = random.Random(7)
    packets = stream(rng, 60000, 500, varied=True)
    one, many = native.FecEncoder(6, 5), native.FecEncoder(6, 5)
    singles = [f for p in packets for f in one.push(p)]
    n = many.push_batch(native.PacketBatch(packets[:250]))
    n2 = many.push_batch(native.PacketBatch(packets[250:], stride=1600))
    assert many.batch_output(n2) == singles[n:] and n + n2 == len(singles)
    events, _ = events_for(rng, packets, encode(native.FecEncoder(6, 5), packets), 0.1, 0.05, 3)
    dec_one, dec_many = native.FecDecoder(6, 5), native.FecDecoder(6, 5)
    codes, out = run_decoder(dec_one, events)
    # In batches of 32, the recovered packets taken after each (they are held while in the window).
    codes_many, out_many = [], []
    for at in range(0, len(events), 32):
        part = events[at:at + 32]
        codes_many += dec_many.push_batch(native.PacketBatch([p for _, p in part], is_fec=[w == "f" for w, _ in part]))
        out_many += dec_many.recovered()
    assert codes_many == codes and out_many == out and len(out) > 20
    assert dec_many.stats() == dec_one.stats()


@pytest.mark.parametrize("native_kind", KINDS)
def test_one_loss_per_row_is_always_recovered_with_rows_only(native_kind: bool) -> None:
    rng = random.Random(1)
    packets = stream(rng, 65000, 400, varied=True)
    enc, dec = repair.fec_encoder(5, 0, native=native_kind), repair.fec_decoder(5, 0, native=native_kind)
    fecs = encode(enc, packets)
    assert [k for _, k, _ in fecs] == [1] * 80
    lost = {65000 + 5 * r + rng.randrange(5) for r in range(80)}
    events = in_order(packets, fecs, {x & 0xFFFF for x in lost})
    _, out = run_decoder(dec, events)
    assert sorted(seq_of(r) & 0xFFFF for r in out) == sorted(s & 0xFFFF for s in lost)
    assert all(r == packets[(seq_of(r) - 65000) % 65536] for r in out)


@pytest.mark.parametrize("native_kind", KINDS)
def test_a_lost_row_is_rebuilt_by_the_columns_and_unblocks_rows(native_kind: bool) -> None:
    rng = random.Random(2)
    packets = stream(rng, 100, 100, varied=False)                 # one 10x10 matrix
    enc, dec = repair.fec_encoder(10, 10, native=native_kind), repair.fec_decoder(10, 10, native=native_kind)
    fecs = encode(enc, packets)
    assert sorted(k for _, k, _ in fecs) == [0] * 10 + [1] * 10
    # A burst of 10 (a whole row) plus one in a later row: columns rebuild nine of the burst; the
    # tenth shares its column with the later loss, which row FEC rebuilds first, unblocking it.
    lost = set(range(130, 140)) | {152}
    events = in_order(packets, fecs, {x & 0xFFFF for x in lost})
    _, out = run_decoder(dec, events)
    assert sorted(seq_of(r) for r in out) == sorted(lost)
    stats = dec.stats()
    assert stats["recovered"] == 11 and stats["unrecoverable"] == 0


@pytest.mark.parametrize("native_kind", KINDS)
def test_what_xor_cannot_recover_is_counted_when_it_leaves_the_window(native_kind: bool) -> None:
    rng = random.Random(3)
    packets = stream(rng, 0, 300, varied=False)
    enc, dec = repair.fec_encoder(4, 4, native=native_kind), repair.fec_decoder(4, 4, native=native_kind)
    fecs = encode(enc, packets)
    lost = {9, 10, 13, 14}                        # a 2x2 square: no row nor column has a single loss
    events = in_order(packets, fecs, {x & 0xFFFF for x in lost})
    _, out = run_decoder(dec, events)
    stats = dec.stats()
    assert out == [] and stats["recovered"] == 0 and stats["unrecoverable"] == 4
    assert stats["window"] == 64 and stats["media"] == 296 and stats["fec_late"] == 0
    # Losses before the first packet received are nobody's to count: the decoder starts there.
    later = repair.fec_decoder(4, 4, native=native_kind)
    run_decoder(later, in_order(packets, fecs, {0, 1, 9, 10, 13, 14}))
    assert later.stats()["unrecoverable"] == 4


@pytest.mark.parametrize("native_kind", KINDS)
def test_copies_late_packets_and_bad_input_are_counted(native_kind: bool) -> None:
    rng = random.Random(4)
    packets = stream(rng, 10, 12, varied=False)
    enc, dec = repair.fec_encoder(4, 2, native=native_kind), repair.fec_decoder(4, 2, native=native_kind)
    fecs = [f for _, _, f in encode(enc, packets)]
    assert dec.fec(fecs[0]) == 2                  # before any media: nothing to place it against
    assert [dec.media(p) for p in packets[1:6]] == [0] * 5
    assert [dec.media(bytearray(p)) for p in packets[6:9]] == [0] * 3        # any buffer will do
    assert [dec.media(memoryview(b"xx" + p)[2:]) for p in packets[9:]] == [0] * 3
    assert dec.media(packets[2]) == 1             # a copy
    assert all(dec.fec(f) == 0 for f in fecs)
    assert [seq_of(r) for r in dec.recovered()] == [10]
    assert dec.media(packets[0]) == 1             # the original after its recovery: drop it
    bad_other_matrix = repair.fec_encoder(5, 2, native=native_kind).push(packets[0])
    for junk in (b"", b"\x80" * 11, b"\x40" + bytes(30), bytes(3000)):
        assert dec.media(junk) == -1
        assert dec.fec(junk) == -1
    assert [dec.fec(f) for _, f in bad_other_matrix] == [-1] * len(bad_other_matrix)
    assert dec.media(media(10 - 100, 10, rng=rng)) == 2       # older than the window (32)
    stats = dec.stats()
    assert (stats["duplicates"], stats["late"], stats["bad_media"]) == (2, 1, 4)
    assert stats["bad_fec"] == 4 + len(bad_other_matrix)


def test_the_header_is_smpte_2022_1() -> None:
    rng = random.Random(5)
    packets = stream(rng, 500, 6, varied=False)
    fecs = encode(py_fec.FecEncoder(3, 2, payload_type=100, ssrc=0), packets)
    column = next(f for _, k, f in fecs if k == 0)
    row = next(f for _, k, f in fecs if k == 1)
    b0, b1, seq, ts, ssrc, snbase, length, e_pt, mask, ts_rec, ndti, offset, na, ext = struct.unpack(
        "!BBHIIHHB3sIBBBB", row[:28])
    assert (b0 >> 6, b1 & 0x7F, seq, ssrc) == (2, 100, 0, 0)
    assert ts == int.from_bytes(packets[2][4:8], "big")             # the media packet it left with
    assert (snbase, e_pt >> 7, mask, ndti, offset, na, ext) == (500, 1, b"\0\0\0", 0x40, 1, 3, 0)
    assert length == (188 * 7) ^ (188 * 7) ^ (188 * 7)
    assert ts_rec == 500 * 3003 ^ 501 * 3003 ^ 502 * 3003
    snbase, ndti, offset, na = struct.unpack("!H", column[12:14])[0], column[24], column[25], column[26]
    assert (snbase, ndti, offset, na) == (500, 0x00, 3, 2)
    body = bytes(a ^ b for a, b in zip(packets[0][12:], packets[3][12:], strict=True))
    assert column[28:] == body


@pytest.mark.parametrize("native_kind", KINDS)
def test_gaps_restart_the_matrix(native_kind: bool) -> None:
    rng = random.Random(6)
    enc = repair.fec_encoder(2, 2, native=native_kind)
    first = [media(s, 20, rng=rng) for s in (1, 2, 3)]
    assert sum(len(enc.push(p)) for p in first) == 2      # row 1-2, column 1+3
    out = [enc.push(media(s, 20, rng=rng)) for s in (7, 8, 9, 10)]
    assert [len(o) for o in out] == [0, 1, 1, 2]
    assert out[1][0][1][12:14] == b"\x00\x07"
    assert enc.push(b"junk") == []
    assert enc.stats() == {"media": 7, "fec_packets": 6, "restarts": 1, "bad_media": 1}


def test_settings_out_of_range_are_config_errors() -> None:
    for native_kind in KINDS:
        for args in ((0, 4), (21, 4), (4, 21)):
            with pytest.raises(ConfigError):
                repair.fec_encoder(*args, native=native_kind)
            with pytest.raises(ConfigError):
                repair.fec_decoder(*args, native=native_kind)
        with pytest.raises(ConfigError):
            repair.fec_decoder(4, 4, max_packet=9001, native=native_kind)
        with pytest.raises(ConfigError):
            repair.dedup(8, native=native_kind)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32), start=st.integers(0, 65535), count=st.integers(1, 3000),
       loss_a=st.sampled_from([0.0, 0.05, 0.5, 1.0]), skew=st.integers(0, 300))
def test_2022_7_keeps_the_first_copy_of_each_packet(seed: int, start: int, count: int, loss_a: float,
                                                    skew: int) -> None:
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    delivered = set()
    for i in range(count):
        if rng.random() >= loss_a:
            arrivals.append((i + rng.uniform(0, 2), (start + i) & 0xFFFF))
            delivered.add(i)
        if rng.random() >= 0.05:
            arrivals.append((i + skew + rng.uniform(0, 2), (start + i) & 0xFFFF))
            delivered.add(i)
    arrivals.sort()
    twins = [py_dedup.Dedup(1024)] + ([native.Dedup(1024)] if NATIVE_REASON is None else [])
    decisions = [[d.push(seq) for _, seq in arrivals] for d in twins]
    assert all(d == decisions[0] for d in decisions)
    assert all(t.stats() == twins[0].stats() for t in twins)
    kept = [seq for (_, seq), code in zip(arrivals, decisions[0], strict=True) if code == 0]
    assert len(kept) == len(set(kept)) == len(delivered)         # skew < window: nothing is late
    assert twins[0].stats()["first"] == len(delivered)


@pytest.mark.parametrize("native_kind", KINDS)
def test_2022_7_window_bounds_what_it_remembers(native_kind: bool) -> None:
    d = repair.dedup(16, native=native_kind)
    assert [d.push(s) for s in (65530, 65535, 3, 3, 65534)] == [0, 0, 0, 1, 0]
    assert d.push(65530) == 1 and d.push(65500) == 2
    assert d.stats() == {"first": 4, "duplicates": 2, "late": 1}


def peel(lost: set[int], columns: int, rows: int, row_fec: list[bool], col_fec: list[bool]) -> set[int]:
    """What row/column parity leaves lost in one matrix (positions 0..L*D-1), repairing until stuck."""
    lost = set(lost)
    while True:
        single = [next(iter(m)) for r in range(rows) if row_fec[r]
                  for m in [{x for x in lost if x // columns == r}] if len(m) == 1]
        single += [next(iter(m)) for c in range(columns) if col_fec[c]
                   for m in [{x for x in lost if x % columns == c}] if len(m) == 1]
        if not single:
            return lost
        lost -= set(single)


def fec_kept(kind: int, fec: bytes, columns: int, rows: int, row_fec: list[bool], col_fec: list[bool]) -> bool:
    """Whether a FEC packet of the middle matrix (the second of a stream starting at 0) arrives."""
    at = int.from_bytes(fec[12:14], "big") - columns * rows        # SNBase within the middle matrix
    if not 0 <= at < columns * rows:
        return True
    return row_fec[at // columns] if kind == 1 else col_fec[at % columns]


@pytest.mark.parametrize("native_kind", KINDS)
def test_the_decoder_recovers_all_that_parity_can(native_kind: bool) -> None:
    rng = random.Random(8)
    columns, rows = 6, 5
    packets = stream(rng, 0, 3 * columns * rows, varied=False)
    fecs = encode(repair.fec_encoder(columns, rows, native=native_kind), packets)
    stuck = 0
    for _ in range(150):
        # The middle matrix loses media and FEC at 12%; the matrices around it arrive whole.
        lost = {p for p in range(columns * rows) if rng.random() < 0.12}
        row_fec = [rng.random() >= 0.12 for _ in range(rows)]
        col_fec = [rng.random() >= 0.12 for _ in range(columns)]
        base = columns * rows
        kept_fecs = [(i, k, f) for i, k, f in fecs if fec_kept(k, f, columns, rows, row_fec, col_fec)]
        dec = repair.fec_decoder(columns, rows, native=native_kind)
        _, out = run_decoder(dec, in_order(packets, kept_fecs, {base + p for p in lost}))
        left = peel(lost, columns, rows, row_fec, col_fec)
        assert {seq_of(r) - base for r in out} == lost - left
        stuck += bool(left)
    assert stuck > 10                        # the draws include matrices parity cannot fully repair

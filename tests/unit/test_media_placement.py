"""Group placement across nodes (control_plane.media) with recording proxies.

No gRPC: each node's MediaPlane is a fake that records what the placer asked of it
(and can be told to fail), so the order of the calls (the receiver expects a link
before the sender opens it; the sender closes before the receiver forgets) is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from msm.control_plane import media as media_module
from msm.control_plane.media import (
    DEFAULT_MAX_FRAME,
    DEFAULT_PROVIDER,
    MAX_MEMBERS_PER_NODE,
    MediaPlacer,
    SenderBusy,
    UnknownProvider,
)
from msm.protos import media_pb2 as mpb
from msm.sdk.errors import Refused, ResourceExhausted, Unavailable

TCP, SHM = DEFAULT_PROVIDER, "shm"
URN = "urn:msm:group:cam1"


@dataclass
class Calls:
    log: list[tuple[str, ...]] = field(default_factory=list)
    link_ids: dict[tuple[str, str], int] = field(default_factory=dict)   # (node, urn) -> link id seen last
    failing: set[tuple[str, str]] = field(default_factory=set)          # (node, op) that fail


class FakeMediaPlane:
    def __init__(self, node: str, calls: Calls) -> None:
        self.node = node
        self.calls = calls

    def _record(self, op: str, *args: str) -> None:
        self.calls.log.append((self.node, op, *args))
        if (self.node, op) in self.calls.failing:
            raise Unavailable(f"{op} failed on {self.node}")

    async def open_link(self, urn: str, peer_node: str, provider: str, peer_address: bytes, *,
                        max_frame: int, credits: int, link_id: int) -> None:
        assert peer_address == f"{peer_node}/{provider}".encode() and max_frame > 0 and credits > 0
        assert self.calls.link_ids[(peer_node, urn)] == link_id   # the receiver expects this very link
        self._record("open", urn, peer_node, provider)

    async def close_link(self, urn: str, peer_node: str) -> None:
        self._record("close", urn, peer_node)

    async def expect(self, urn: str, peer_node: str, provider: str, peer_address: bytes, *,
                     max_frame: int, link_id: int) -> None:
        assert peer_address == f"{peer_node}/{provider}".encode() and link_id != 0
        self.calls.link_ids[(self.node, urn)] = link_id
        self._record("expect", urn, peer_node, provider)

    async def forget(self, urn: str, peer_node: str) -> None:
        self._record("forget", urn, peer_node)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def placer(calls: Calls) -> MediaPlacer:
    return MediaPlacer(lambda node: FakeMediaPlane(node, calls) if node != "gone" else None)


async def announce(placer: MediaPlacer, node: str, *providers: str, proxy_id: str = "p1") -> None:
    await placer.announce(node, proxy_id, {p: f"{node}/{p}".encode() for p in providers or (TCP,)})


def receivers(placement: mpb.GroupPlacement) -> dict[str, tuple[int, str, bool, str]]:
    return {r.node: (r.members, r.provider, r.linked, r.error) for r in placement.receivers}


async def test_one_link_per_receiving_node_other_than_the_senders(placer: MediaPlacer, calls: Calls) -> None:
    for node in ("a", "b", "c"):
        await announce(placer, node)
    await placer.join(URN, "a", "memif:tx", sender=True, max_frame=6_000_000)
    await placer.join(URN, "a", "memif:local", sender=False)        # the sender's node: local fan-out
    await placer.join(URN, "b", "memif:1", sender=False)
    await placer.join(URN, "b", "memif:2", sender=False)            # a second receiver on b: no second link
    placement = await placer.join(URN, "c", "memif:1", sender=False)
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP),
                         ("c", "expect", URN, "a", TCP), ("a", "open", URN, "c", TCP)]
    assert placement.sender_node == "a" and placement.sender_member == "memif:tx"
    assert placement.max_frame == 6_000_000
    assert receivers(placement) == {"a": (1, "", True, ""), "b": (2, TCP, True, ""), "c": (1, TCP, True, "")}
    calls.log.clear()
    await placer.leave(URN, "b", "memif:1", sender=False)
    assert calls.log == []                                          # b still has a receiver
    placement = await placer.leave(URN, "b", "memif:2", sender=False)
    assert calls.log == [("a", "close", URN, "b"), ("b", "forget", URN, "a")]   # sender stops first
    assert set(receivers(placement)) == {"a", "c"}


async def test_receivers_before_the_sender_and_the_sender_leaving(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a")
    await announce(placer, "b")
    placement = await placer.join(URN, "b", "memif:1", sender=False)
    assert calls.log == [] and placement.sender_node == "" and placement.max_frame == DEFAULT_MAX_FRAME
    await placer.join(URN, "a", "memif:tx", sender=True)
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP)]
    calls.log.clear()
    placement = await placer.leave(URN, "a", "memif:tx", sender=True)
    assert calls.log == [("a", "close", URN, "b"), ("b", "forget", URN, "a")]
    assert placement.sender_node == "" and receivers(placement) == {"b": (1, "", False, "")}
    calls.log.clear()
    await placer.join(URN, "b", "memif:tx", sender=True)            # a new sender on b itself: no link at all
    placement = await placer.leave(URN, "b", "memif:1", sender=False)
    assert calls.log == [] and not placement.receivers
    await placer.leave(URN, "b", "memif:tx", sender=True)
    assert placer.groups == {}                                       # an empty group is forgotten


async def test_joins_and_leaves_are_idempotent(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a")
    await announce(placer, "b")
    for _ in range(2):
        await placer.join(URN, "a", "memif:tx", sender=True)
        await placer.join(URN, "b", "memif:1", sender=False)
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP)]
    with pytest.raises(SenderBusy) as busy:
        await placer.join(URN, "b", "memif:other", sender=True)
    assert busy.value.status == 409 and "memif:tx on node a" in busy.value.reason
    for _ in range(2):
        await placer.leave(URN, "b", "memif:1", sender=False)
        await placer.leave(URN, "b", "memif:never-joined", sender=False)
        await placer.leave("urn:msm:group:none", "b", "memif:1", sender=False)
    assert calls.log[2:] == [("a", "close", URN, "b"), ("b", "forget", URN, "a")]


async def test_provider_asked_for_when_both_ends_have_it(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a", TCP, SHM)
    await announce(placer, "b", TCP, SHM)
    await announce(placer, "c", TCP)
    await placer.join(URN, "a", "memif:tx", sender=True)
    await placer.join(URN, "b", "memif:1", sender=False, provider=SHM)
    placement = await placer.join(URN, "c", "memif:1", sender=False, provider=SHM)   # c has no shm
    assert ("b", "expect", URN, "a", SHM) in calls.log and ("c", "expect", URN, "a", TCP) in calls.log
    assert receivers(placement)["b"][1] == SHM and receivers(placement)["c"][1] == TCP
    with pytest.raises(UnknownProvider, match="unknown fabric provider 'verbs'.*known: shm, tcp;ofi_rxm"):
        await placer.join(URN, "c", "memif:2", sender=False, provider="verbs")
    with pytest.raises(UnknownProvider):
        await placer.announce("c", "p1", {"verbs;ofi_rxm": b"x"})


async def test_no_common_provider_is_reported_and_placed_once_announced(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a", SHM)
    await placer.join(URN, "a", "memif:tx", sender=True)
    placement = await placer.join(URN, "b", "memif:1", sender=False)   # b announced nothing yet
    members, provider, linked, error = receivers(placement)["b"]
    assert not linked and "no common fabric provider" in error and calls.log == []
    await announce(placer, "a", SHM, TCP)
    await announce(placer, "b", TCP)                                   # placed as soon as it is possible
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP)]
    assert receivers(placer.placements()[0])["b"] == (1, TCP, True, "")


async def test_failed_links_are_reported_undone_and_retried(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a")
    await announce(placer, "b")
    await placer.join(URN, "a", "memif:tx", sender=True)
    calls.failing.add(("a", "open"))
    placement = await placer.join(URN, "b", "memif:1", sender=False)
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP), ("b", "forget", URN, "a")]
    assert receivers(placement)["b"][2:] == (False, "open failed on a")
    calls.failing.clear()
    calls.log.clear()
    placement = await placer.join(URN, "b", "memif:1", sender=False)     # the join again retries
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP)]
    assert receivers(placement)["b"] == (1, TCP, True, "")


async def test_a_gone_proxy_loses_its_members_and_links(placer: MediaPlacer, calls: Calls) -> None:
    for node in ("a", "b", "c"):
        await announce(placer, node)
    await placer.join(URN, "a", "memif:tx", sender=True)
    await placer.join(URN, "b", "memif:1", sender=False)
    await placer.join(URN, "c", "memif:1", sender=False)
    calls.log.clear()
    await placer.node_gone("c", "old-proxy-id")                      # a stale departure changes nothing
    assert calls.log == []
    await placer.node_gone("c", "p1")
    assert calls.log == [("a", "close", URN, "c")]                   # the gone proxy itself is not called
    assert set(receivers(placer.placements()[0])) == {"b"}
    calls.log.clear()
    await placer.proxy_registered("a", "p2")                          # the sender's proxy restarted
    assert calls.log == [("b", "forget", URN, "a")]                  # (the new one never had the link)
    assert placer.placements()[0].sender_node == "" and "a" not in placer.fabric
    calls.log.clear()
    await announce(placer, "a", proxy_id="p2")
    await placer.join(URN, "a", "memif:tx", sender=True)               # its agent joins again
    assert calls.log == [("b", "expect", URN, "a", TCP), ("a", "open", URN, "b", TCP)]


async def test_a_node_without_a_proxy_gets_no_link(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a")
    await announce(placer, "gone")
    await placer.join(URN, "a", "memif:tx", sender=True)
    placement = await placer.join(URN, "gone", "memif:1", sender=False)
    assert receivers(placement)["gone"][2:] == (False, "no proxy on node gone") and calls.log == []


async def test_bounds_and_bad_requests(calls: Calls) -> None:
    placer = MediaPlacer(lambda node: FakeMediaPlane(node, calls), max_groups=2)
    await placer.join("urn:1", "a", "m", sender=False)
    await placer.join("urn:2", "a", "m", sender=False)
    with pytest.raises(ResourceExhausted):
        await placer.join("urn:3", "a", "m", sender=False)
    assert set(placer.groups) == {"urn:1", "urn:2"}
    for index in range(MAX_MEMBERS_PER_NODE - 1):
        await placer.join("urn:1", "a", f"m{index}", sender=False)
    with pytest.raises(ResourceExhausted):
        await placer.join("urn:1", "a", "one-too-many", sender=False)
    await placer.join("urn:1", "a", "m", sender=False)                # a member already there may join again
    for bad in ({"urn": ""}, {"urn": "x" * 300}, {"member": ""}, {"node": ""}, {"max_frame": 1 << 30},
                {"urn": "urn:\n"}):
        args = {"urn": "urn:9", "node": "a", "member": "m", "max_frame": 0, **bad}
        with pytest.raises(Refused):
            await placer.join(str(args["urn"]), str(args["node"]), str(args["member"]), sender=False,
                              max_frame=int(args["max_frame"]))
    with pytest.raises(Refused, match="address"):
        await placer.announce("a", "p1", {TCP: b""})
    with pytest.raises(Refused, match="address"):
        await placer.announce("a", "p1", {TCP: b"x" * 1000})
    assert set(placer.groups) == {"urn:1", "urn:2"} and calls.log == []


async def test_an_announcement_drops_the_leaves_that_were_missed(placer: MediaPlacer, calls: Calls) -> None:
    await announce(placer, "a")
    await announce(placer, "b")
    await placer.join(URN, "a", "memif:tx", sender=True)
    await placer.join(URN, "b", "memif:1", sender=False)
    await placer.join(URN, "b", "memif:2", sender=False)
    await placer.join("urn:other", "b", "memif:1", sender=False)
    calls.log.clear()
    # b's proxy comes back with memif:2 only (memif:1's Leaves never arrived): one link stays.
    await placer.announce("b", "p1", {TCP: b"b/" + TCP.encode()}, {(URN, "memif:2", False)})
    assert calls.log == [] and "urn:other" not in placer.groups
    assert receivers(placer.placements()[0])["b"] == (1, TCP, True, "")
    await placer.announce("a", "p1", {TCP: b"a/" + TCP.encode()}, set())   # a's sender is gone too
    assert calls.log == [("a", "close", URN, "b"), ("b", "forget", URN, "a")]
    assert placer.placements()[0].sender_node == ""


async def test_a_node_takes_part_in_a_bounded_number_of_groups(placer: MediaPlacer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_module, "MAX_GROUPS_PER_NODE", 3)
    for index in range(3):
        await placer.join(f"urn:{index}", "a", "m", sender=index == 0)
    with pytest.raises(ResourceExhausted, match="node a already takes part in 3 groups"):
        await placer.join("urn:3", "a", "m", sender=False)
    await placer.join("urn:2", "a", "m2", sender=False)     # more members of a group it is in: fine
    await placer.join("urn:3", "b", "m", sender=False)      # another node: fine

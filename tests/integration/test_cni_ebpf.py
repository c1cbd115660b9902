"""msm-cni's ``"redirectMode": "ebpf"`` run as a runtime runs it, with real traffic.

The same tiny runtime as ``test_cni.py`` (Debian's loopback/bridge/host-local
plugins, then msm-cni from CNI_PATH, a recorded-pods API server), plus what a
node gives a pod in eBPF mode: a cgroup v2 directory (``msmtest-*`` under the
cgroup2 mount) that the plugin attaches to (``cgroupPath``) and that the pod's
processes run in, and a pin directory of its own (``bpfPinPath``), so the test
never touches the machine's root cgroup or ``/sys/fs/bpf/msm``.

What it checks: an app's connect() to gateway:554 from the pod's netns and
cgroup lands on the pod's 8554 listener, which reads the original destination
with the stub's own ``original_destination()`` (SO_ORIGINAL_DST, answered by
the getsockopt program); the stub's UID, loopback, other ports, other network
namespaces and processes outside the cgroup are left alone; the same over IPv6
(connect6, to the pod's [::]:8554 listener, IP6T_SO_ORIGINAL_DST) and from an
IPv6 socket to an IPv4-mapped address (to the IPv4 listener); DEL detaches and
unpins everything when the last pod goes (checked with BPF_PROG_QUERY on the
cgroup and by program id), and DEL twice is fine.

Needs what ``test_cni.py`` needs plus BCC, kernel headers for it and bpffs;
skips, saying which is missing (``ebpf.preflight``), without them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from msm.cni_plugin import ebpf, libbpf
from msm.cni_plugin.ebpf_program import MAP_SIZES
from msm.cni_plugin.errors import EbpfUnavailable
from tests.integration.test_cni import (
    APP_UID,
    CLIENT,
    LISTEN,
    STUB_UID,
    SYSTEM_PYTHON,
    FakeApi,
    Node,
    Sandbox,
    add_netns,
    runtime_bin_dir,
    sh,
    subnets,
    write_kubeconfig,
)
from tests.integration.test_cni import Listeners as CniListeners
from tests.integration.test_cni import _why_skip as _why_skip_cni

REPO = Path(__file__).resolve().parents[2]
ATTACH_TYPES = {
    "connect4": ebpf.ATTACH_CGROUP_INET4_CONNECT,
    "connect6": ebpf.ATTACH_CGROUP_INET6_CONNECT,
    "sockops": ebpf.ATTACH_CGROUP_SOCK_OPS,
    "getsockopt": ebpf.ATTACH_CGROUP_GETSOCKOPT,
}


def _why_skip() -> str:
    if why := _why_skip_cni():
        return why
    try:
        ebpf.preflight()
    except EbpfUnavailable as exc:
        return f"eBPF mode cannot run here: {exc}"
    return ""


SKIP = _why_skip()
if SKIP:
    print(f"tests/integration/test_cni_ebpf.py skipped: {SKIP}")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.skipif(bool(SKIP), reason=SKIP)]


# -- the node: a runtime, a cgroup for its pods, a pin directory ----------------------------


@dataclass
class EbpfNode:
    node: Node
    cgroup: Path
    pins: Path

    def conf(self) -> dict[str, Any]:
        return {"redirectMode": "ebpf", "cgroupPath": str(self.cgroup), "bpfPinPath": str(self.pins)}


def _prog_query(cgroup: Path, attach_type: int) -> list[int]:
    """The ids of the programs attached to ``cgroup`` for one hook (BPF_PROG_QUERY)."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    ids = (ctypes.c_uint32 * 64)()
    count = ctypes.c_uint32(64)
    flags = ctypes.c_uint32(0)
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ret = lib.bpf_prog_query(fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count))
    finally:
        os.close(fd)
    assert ret == 0, os.strerror(-ret)
    return list(ids[: count.value])


def attached(cgroup: Path) -> dict[str, list[int]]:
    return {name: _prog_query(cgroup, kind) for name, kind in ATTACH_TYPES.items()}


def detached(cgroup: Path, progs: dict[str, list[int]] | None = None, timeout: float = 5.0) -> bool:
    """Nothing attached to ``cgroup`` (and the programs ``progs`` freed) within
    ``timeout``: the kernel releases an unpinned link from a workqueue and a
    program after an RCU grace period, so neither is immediate."""
    deadline = time.monotonic() + timeout
    while True:
        done = attached(cgroup) == {name: [] for name in ATTACH_TYPES} and not any(
            prog_exists(i) for ids in (progs or {}).values() for i in ids
        )
        if done or time.monotonic() > deadline:
            return done
        time.sleep(0.05)


def prog_exists(prog_id: int) -> bool:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd >= 0:
        os.close(fd)
    return bool(fd >= 0)


def pin_map(path: Path, key_size: int, value_size: int) -> None:
    """Pin a new LRU hash map at ``path`` (as an older msm-cni's would be)."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p] + [ctypes.c_uint32] * 3 + [ctypes.c_void_p]
    fd = lib.bpf_map_create(9, b"by_peer", key_size, value_size, 64, None)  # BPF_MAP_TYPE_LRU_HASH
    assert fd >= 0, os.strerror(-fd)
    try:
        assert lib.bpf_obj_pin(fd, str(path).encode()) == 0
    finally:
        os.close(fd)


def map_sizes(path: Path) -> tuple[int, int]:
    fd = libbpf.get().obj_get(path)
    try:
        return libbpf.get().map_sizes(fd)
    finally:
        os.close(fd)


def _clear_pins(pins: Path) -> None:
    if pins.is_dir():
        for entry in pins.iterdir():
            entry.unlink()
        pins.rmdir()


@pytest.fixture(scope="module")
def enode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EbpfNode]:
    tmp = tmp_path_factory.mktemp("cni-ebpf")
    suffix = secrets.token_hex(3)
    host_ns = f"msmhost-{suffix}"
    bin_dir = runtime_bin_dir(tmp)
    cgroup = Path(ebpf._cgroup2_root()) / f"msmtest-{suffix}"
    pins = ebpf.BPFFS / f"msmtest-{suffix}"
    api = FakeApi()
    add_netns(host_ns)
    cgroup.mkdir()
    try:
        sh("ip", "-n", host_ns, "link", "set", "lo", "up")
        subnet, subnet6 = subnets()
        node = Node(
            tmp=tmp,
            bin_dir=bin_dir,
            host_ns=host_ns,
            api=api,
            kubeconfig=write_kubeconfig(tmp / "kubeconfig", f"http://127.0.0.1:{api.port}"),
            subnet=subnet,
            subnet6=subnet6,
            bridge=f"msmbe{suffix}",
        )
        yield EbpfNode(node=node, cgroup=cgroup, pins=pins)
    finally:
        api.close()
        sh("ip", "netns", "del", host_ns, check=False)
        _clear_pins(pins)  # what a failed test left (unpinning the links detaches the programs)
        with contextlib.suppress(OSError):
            cgroup.rmdir()  # the sandboxes killed every process in it


@pytest.fixture
def pods(enode: EbpfNode) -> Iterator[list[Sandbox]]:
    """Up to a few pods (netns each), cleaned up even when the test fails."""
    boxes: list[Sandbox] = []
    yield boxes
    for box in boxes:
        for proc in box.processes:
            proc.kill()
            proc.wait(timeout=5)
        if box.result:
            with contextlib.suppress(Exception):
                enode.node.del_chain(box)
        ebpf._state_file(box.container_id, "eth0").unlink(missing_ok=True)
        sh("ip", "netns", "del", box.name, check=False)


def new_pod(enode: EbpfNode, pods: list[Sandbox]) -> Sandbox:
    box = Sandbox(name=f"msmtest-{secrets.token_hex(3)}", container_id=secrets.token_hex(16))
    add_netns(box.name)
    pods.append(box)
    enode.node.add_chain(box, **enode.conf())
    return box


# -- processes in a netns and (optionally) the pod's cgroup ----------------------------------


def in_pod(netns: str, cgroup: Path | None, *argv: str) -> list[str]:
    """argv run in ``netns``, moved into ``cgroup`` first (as a container's processes are)."""
    command = ["ip", "netns", "exec", netns, *argv]
    if cgroup is None:
        return command
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *command]


# The pod side: the stub's own original_destination() on every accepted connection.
STUB = r"""
import json, socket, sys, threading
from msm.stub.server import original_destination

def accept(listener, label):
    while True:
        conn, peer = listener.accept()
        with conn:
            orig = original_destination(conn, conn.getsockname()) or None
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            conn.sendall(b"ok")
            print(json.dumps({"at": label, "data": data.decode(), "orig": orig}), flush=True)
""" + LISTEN


class Listeners(CniListeners):
    """test_cni's listeners, run inside the pod's cgroup as well as its netns."""

    def __init__(self, box: Sandbox, netns: str, cgroup: Path | None, *addresses: str) -> None:
        self._spawn(box, in_pod(netns, cgroup, sys.executable, "-c", STUB, *addresses), cwd=REPO)

    def quiet(self) -> bool:
        return self.lines.empty()


def connect(netns: str, cgroup: Path | None, uid: int, host: str, port: int, payload: str) -> None:
    sh(*in_pod(
        netns, cgroup,
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        SYSTEM_PYTHON, "-c", CLIENT, host, str(port), payload,
    ))  # fmt: skip


# -- the tests -------------------------------------------------------------------------------


def test_pod_traffic_over_ipv4_and_ipv6_is_redirected_and_del_leaves_nothing(
    enode: EbpfNode, pods: list[Sandbox]
) -> None:
    node, cg = enode.node, enode.cgroup
    box = new_pod(enode, pods)
    assert box.result["ips"], box.result  # prevResult passed through
    progs = attached(cg)
    assert all(len(ids) == 1 for ids in progs.values()), progs
    if shutil.which("bpftool"):
        shown = sh("bpftool", "cgroup", "show", str(cg))
        assert all(f"msm_{name}" in shown for name in ATTACH_TYPES), shown
    assert sorted(p.name for p in enode.pins.iterdir()) == sorted(
        [link for *_, link in ebpf.PROGRAMS] + list(ebpf.MAPS)
    )
    check = node.msm("CHECK", box, **enode.conf())
    assert (check.code, check.out) == (0, None), check

    gw, gw6 = box.gateway, box.gateway6
    pod = Listeners(box, box.name, cg, "0.0.0.0:8554", "127.0.0.1:554", "[::]:8554", "[::1]:554")
    upstream = Listeners(box, node.host_ns, None, f"{gw}:554", f"{gw}:8080", f"[{gw6}]:554", f"[{gw6}]:8080")

    connect(box.name, cg, APP_UID, gw, 554, "app")  # the app's RTSP goes to its stub
    assert pod.next() == {"at": "0.0.0.0:8554", "data": "app", "orig": f"{gw}:554"}
    connect(box.name, cg, STUB_UID, gw, 554, "stub")  # the stub's own upstream connection does not
    assert upstream.next() == {"at": f"{gw}:554", "data": "stub", "orig": None}
    connect(box.name, cg, APP_UID, "127.0.0.1", 554, "loopback")  # nor anything to 127.0.0.0/8
    assert pod.next() == {"at": "127.0.0.1:554", "data": "loopback", "orig": None}
    connect(box.name, cg, APP_UID, gw, 8080, "http")  # nor other ports
    assert upstream.next()["data"] == "http"
    connect(node.host_ns, cg, APP_UID, gw, 554, "other-netns")  # nor another netns in the cgroup
    assert upstream.next()["data"] == "other-netns"
    connect(box.name, None, APP_UID, gw, 554, "outside-cgroup")  # nor what runs outside cgroupPath
    assert upstream.next()["data"] == "outside-cgroup"
    connect(box.name, cg, APP_UID, gw, 554, "again")  # many connections: each its own original dst
    assert pod.next() == {"at": "0.0.0.0:8554", "data": "again", "orig": f"{gw}:554"}

    # IPv6 (connect6): to the stub's [::1]:8554, with the same exemptions.
    connect(box.name, cg, APP_UID, gw6, 554, "app6")
    assert pod.next() == {"at": "[::]:8554", "data": "app6", "orig": f"[{gw6}]:554"}
    connect(box.name, cg, STUB_UID, gw6, 554, "stub6")
    assert upstream.next() == {"at": f"[{gw6}]:554", "data": "stub6", "orig": None}
    connect(box.name, cg, APP_UID, "::1", 554, "loopback6")
    assert pod.next() == {"at": "[::1]:554", "data": "loopback6", "orig": None}
    connect(box.name, cg, APP_UID, gw6, 8080, "http6")
    assert upstream.next()["data"] == "http6"
    connect(box.name, None, APP_UID, gw6, 554, "outside-cgroup6")
    assert upstream.next()["data"] == "outside-cgroup6"
    # An IPv6 socket to an IPv4-mapped address: to the stub's IPv4 listener, as
    # the nftables mode (which sees IPv4 packets) sends it; loopback is exempt.
    connect(box.name, cg, APP_UID, f"::ffff:{gw}", 554, "mapped")
    assert pod.next() == {"at": "0.0.0.0:8554", "data": "mapped", "orig": f"{gw}:554"}
    connect(box.name, cg, APP_UID, "::ffff:127.0.0.1", 554, "mapped-loopback")
    assert pod.next() == {"at": "127.0.0.1:554", "data": "mapped-loopback", "orig": None}
    assert pod.quiet() and upstream.quiet()

    requests = len(node.api.requests)
    deleted = node.msm("DEL", box)  # msm-cni's DEL only: the pod keeps its network
    assert (deleted.code, deleted.out) == (0, None), deleted
    assert len(node.api.requests) == requests  # DEL needs no API server
    assert detached(cg, progs)  # detached and freed
    assert not enode.pins.exists()
    assert not ebpf._state_file(box.container_id, "eth0").exists()
    again = node.msm("DEL", box)
    assert (again.code, again.out) == (0, None), again

    connect(box.name, cg, APP_UID, gw, 554, "after")  # no redirect left
    assert upstream.next()["data"] == "after"
    connect(box.name, cg, APP_UID, gw6, 554, "after6")
    assert upstream.next()["data"] == "after6"


def test_programs_stay_while_a_pod_needs_them_and_gc_removes_the_rest(enode: EbpfNode, pods: list[Sandbox]) -> None:
    node, cg = enode.node, enode.cgroup
    first, second = new_pod(enode, pods), new_pod(enode, pods)
    progs = attached(cg)
    assert all(len(ids) == 1 for ids in progs.values()), progs  # attached once for both

    assert node.msm("DEL", first).code == 0
    assert attached(cg) == progs  # the second pod still needs them
    assert node.msm("CHECK", second, **enode.conf()).code == 0
    gone = node.msm("CHECK", first, **enode.conf())
    assert gone.code == 1 and gone.error_code == 102 and "missing" in gone.out["msg"], gone  # type: ignore[index]

    # The links unpinned behind msm-cni's back (the programs detach): CHECK
    # notices and the next ADD attaches them again; the map keeps its entries.
    for *_, link in ebpf.PROGRAMS:
        (enode.pins / link).unlink()
    assert detached(cg, progs)
    unattached = node.msm("CHECK", second, **enode.conf())
    assert unattached.code == 1 and unattached.error_code == 102, unattached
    # ... with the pending map an IPv4-only msm-cni pinned (8-byte values) in place:
    # the re-attaching ADD replaces it rather than load programs against it.
    (enode.pins / "by_peer").unlink()
    pin_map(enode.pins / "by_peer", key_size=16, value_size=8)
    assert node.msm("ADD", first, **enode.conf()).code == 0
    assert map_sizes(enode.pins / "by_peer") == MAP_SIZES["by_peer"]
    assert map_sizes(enode.pins / "redirect") == MAP_SIZES["redirect"]
    assert node.msm("CHECK", second, **enode.conf()).code == 0

    gc = node.run(
        {
            "cniVersion": "1.1.0",
            "name": "msmtest",
            **node.msm_conf(**enode.conf()),
            "cni.dev/valid-attachments": [{"containerID": second.container_id, "ifname": "eth0"}],
        },
        "GC",
    )
    assert gc.code == 0, gc
    assert node.msm("CHECK", second, **enode.conf()).code == 0  # kept
    assert not ebpf._state_file(first.container_id, "eth0").exists()  # collected
    gc_all = node.run({"cniVersion": "1.1.0", "name": "msmtest", **node.msm_conf(**enode.conf())}, "GC")
    assert gc_all.code == 0, gc_all
    assert detached(cg) and not enode.pins.exists()
    for box in (first, second):
        assert node.msm("DEL", box).code == 0


def test_a_cgroup_path_that_is_not_a_cgroup_fails_the_add(enode: EbpfNode, pods: list[Sandbox], tmp_path: Path) -> None:
    box = Sandbox(name=f"msmtest-{secrets.token_hex(3)}", container_id=secrets.token_hex(16))
    add_netns(box.name)
    pods.append(box)
    msm = enode.node.msm_conf(**{**enode.conf(), "cgroupPath": str(tmp_path)})
    conf = {"cniVersion": "1.0.0", "name": "msmtest", **msm, "prevResult": {"cniVersion": "1.0.0"}}
    answer = enode.node.run(conf, "ADD", sandbox=box)
    assert answer.code == 1 and answer.error_code == 101 and str(tmp_path) in answer.out["details"], answer  # type: ignore[index]
    assert not enode.pins.exists()

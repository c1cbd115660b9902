"""The nftables redirect, installed inside the pod's network namespace.

Everything msm-cni adds lives in one table, ``inet msm``, so DEL removes exactly
what ADD added by deleting that table and touches nothing else in the pod.

Entering the namespace: ``nsenter --net=<CNI_NETNS> nft -f -``. Only the child
process enters the pod's namespace; the plugin itself never calls ``setns``, so
an error cannot leave it half in one namespace and half in another, and it
needs no extra Python package. ``nft -f`` applies a whole file as one netlink
transaction: the ruleset is installed completely or not at all, and replacing
an existing table (a repeated ADD) is part of the same transaction.

The rules (NAT ``output`` hook, so only connections the pod itself opens):

* ``oifname "lo"`` and destinations in 127.0.0.0/8 and ::1 are left alone: the
  stub reaching the app over loopback, or the app reaching the stub, must not
  loop back into the stub;
* sockets owned by the stub's UID (1337) are left alone: the stub's own
  upstream connections to port 554 must reach the real server;
* TCP to an intercepted port (default 554) is redirected to the stub's port
  (8554); for locally generated packets ``redirect`` rewrites the destination
  to the loopback address, where the stub listens, and the stub recovers the
  original destination with ``SO_ORIGINAL_DST``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .errors import CheckFailed, NetnsGone, RedirectFailed

TABLE_FAMILY = "inet"
TABLE_NAME = "msm"
CHAIN_NAME = "output"
#: Runtimes start plugins with a minimal environment; look in the sbin
#: directories too, where Debian puts nft.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
)
#: nft on a busy node answers in milliseconds; a stuck one must not hang the
#: runtime's pod setup forever.
NFT_TIMEOUT = 10.0


def render(settings: Settings) -> str:
    """The nft script that (re)creates the table, as one transaction.

    ``table inet msm`` then ``delete table inet msm`` first: creating an empty
    table is a no-op when it exists, so the delete always succeeds and a second
    ADD replaces the first one's rules instead of failing or duplicating them.
    """
    ports = ", ".join(str(p) for p in settings.intercept_ports)
    return f"""table {TABLE_FAMILY} {TABLE_NAME}
delete table {TABLE_FAMILY} {TABLE_NAME}
table {TABLE_FAMILY} {TABLE_NAME} {{
    comment "msm-cni: redirect of outbound TCP {ports} to the stub; removed by CNI DEL"
    chain {CHAIN_NAME} {{
        type nat hook output priority -100; policy accept;
        oifname "lo" return
        ip daddr 127.0.0.0/8 return
        ip6 daddr ::1 return
        meta skuid {settings.proxy_uid} return
        meta l4proto tcp tcp dport {{ {ports} }} redirect to :{settings.redirect_port}
    }}
}}
"""


REMOVE_SCRIPT = f"table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"


def tool(name: str) -> str:
    found = shutil.which(name, path=_SEARCH_PATH)
    if not found:
        raise RedirectFailed(f"{name} not found", f"msm-cni needs {name} on the node (searched {_SEARCH_PATH})")
    return found


@dataclass(frozen=True, slots=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


def _nft_in(netns: str, args: list[str], script: str = "") -> _Run:
    """Run nft inside ``netns``; ``NetnsGone`` when the namespace cannot be entered."""
    if not os.path.exists(netns):
        raise NetnsGone(netns)
    argv = [tool("nsenter"), f"--net={netns}", tool("nft"), *args]
    try:
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RedirectFailed("nft timed out", f"{' '.join(argv)}: no answer in {NFT_TIMEOUT:g} s") from exc
    except OSError as exc:
        raise RedirectFailed("cannot run nft", f"{' '.join(argv)}: {exc}") from exc
    # nsenter's own failures (no such file, not a namespace) are prefixed with
    # its name; nft's are not.
    if done.returncode != 0 and done.stderr.startswith("nsenter:"):
        raise NetnsGone(f"{netns}: {done.stderr.strip()}")
    return _Run(done.returncode, done.stdout, done.stderr)


def install(netns: str, settings: Settings) -> None:
    done = _nft_in(netns, ["-f", "-"], render(settings))
    if done.returncode != 0:
        raise RedirectFailed("nft rejected the redirect ruleset", f"in {netns}: {done.stderr.strip()}")


def remove(netns: str) -> bool:
    """Delete the table; False when there is nothing to remove (the namespace is
    gone, or this node has no nft, so no ADD can have installed anything)."""
    if available():
        return False
    try:
        done = _nft_in(netns, ["-f", "-"], REMOVE_SCRIPT)
    except NetnsGone:
        return False
    if done.returncode != 0:
        raise RedirectFailed("nft could not delete table inet msm", f"in {netns}: {done.stderr.strip()}")
    return True


def _table(netns: str) -> list[dict[str, Any]] | None:
    done = _nft_in(netns, ["-j", "list", "table", TABLE_FAMILY, TABLE_NAME])
    if done.returncode != 0:
        if "No such file or directory" in done.stderr:
            return None
        raise RedirectFailed("nft could not list table inet msm", f"in {netns}: {done.stderr.strip()}")
    try:
        items = json.loads(done.stdout)["nftables"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RedirectFailed("unexpected nft -j output", f"in {netns}: {exc}") from exc
    return [item for item in items if isinstance(item, dict)]


def _ports(right: object) -> set[int]:
    if isinstance(right, int):
        return {right}
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        return {p for p in right["set"] if isinstance(p, int)}
    return set()


def verify(netns: str, settings: Settings) -> None:
    """CHECK: the table is there and still does what ADD made it do."""
    items = _table(netns)
    where = f"in {netns}"
    if items is None:
        raise CheckFailed("redirect table inet msm is missing", where)
    chains = [i["chain"] for i in items if "chain" in i and i["chain"].get("name") == CHAIN_NAME]
    if not chains or chains[0].get("type") != "nat" or chains[0].get("hook") != "output":
        raise CheckFailed(f"chain {CHAIN_NAME} (nat, hook output) is missing from table inet msm", where)
    rules = [i["rule"]["expr"] for i in items if "rule" in i and i["rule"].get("chain") == CHAIN_NAME]
    exempt_uid = redirected = False
    for expr in rules:
        matches = [e["match"] for e in expr if isinstance(e, dict) and "match" in e]
        if any(m.get("left") == {"meta": {"key": "skuid"}} and m.get("right") == settings.proxy_uid for m in matches):
            exempt_uid = exempt_uid or any(isinstance(e, dict) and "return" in e for e in expr)
        redirect = next((e["redirect"] for e in expr if isinstance(e, dict) and "redirect" in e), None)
        if isinstance(redirect, dict) and redirect.get("port") == settings.redirect_port:
            ports: set[int] = set()
            for m in matches:
                if m.get("left") == {"payload": {"protocol": "tcp", "field": "dport"}}:
                    ports |= _ports(m.get("right"))
            redirected = ports == set(settings.intercept_ports)
    if len(rules) != 5 or not exempt_uid or not redirected:
        raise CheckFailed(
            "table inet msm does not hold the expected rules",
            f"{where}: expected the loopback and UID {settings.proxy_uid} exemptions and a redirect of "
            f"tcp {sorted(settings.intercept_ports)} to :{settings.redirect_port}",
        )


def available() -> str:
    """'' when nsenter and nft are installed, else why not (for STATUS)."""
    try:
        tool("nsenter")
        tool("nft")
    except RedirectFailed as exc:
        return str(exc)
    return ""

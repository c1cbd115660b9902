"""The certificates of a one-machine mesh (``msm up``): a local CA in a state directory.

``<state-dir>/ca/`` holds the mesh CA (key 0600), ``<state-dir>/certs/<workload>/`` one
:class:`~.tls.TlsFiles` per workload: the control plane, the proxy of node ``local``, the
gateway stub (pod ``gateway``) and the operator (``msm streams``). The directory is
0700: whoever can read it is the mesh's administrator.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .ca import CertificateAuthority
from .identity import Identity, Role
from .tls import Rotator, TlsFiles

TRUST_DOMAIN = "msm.local"
NAMESPACE = "local"
SERVICE_ACCOUNT = "msm"
NODE = "local"
GATEWAY_POD = "gateway"

WORKLOADS: dict[str, tuple[Role, str]] = {
    "control-plane": (Role.CONTROL_PLANE, ""),
    "proxy": (Role.PROXY, NODE),
    "gateway": (Role.STUB, GATEWAY_POD),
    "operator": (Role.OPERATOR, ""),
}


def default_state_dir() -> Path:
    """``$MSM_STATE_DIR``, else ``$XDG_STATE_HOME/msm``, else ``~/.local/state/msm``."""
    explicit = os.environ.get("MSM_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) / "msm" if xdg else Path.home() / ".local" / "state" / "msm"


def local_identity(role: Role, name: str = "") -> Identity:
    return Identity(TRUST_DOMAIN, NAMESPACE, SERVICE_ACCOUNT, role, name)


def workload_files(state_dir: Path | str, workload: str) -> TlsFiles:
    return TlsFiles(Path(state_dir) / "certs" / workload)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One process at a time creates the CA and issues: two meshes started together share one CA."""
    with open(state_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class LocalPki:
    """The local mesh's CA and workload certificates, kept fresh by a :class:`~.tls.Rotator`."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.rotator: Rotator | None = None
        self.files: dict[str, TlsFiles] = {}

    def prepare(self) -> None:
        """Create the state directory (0700) and the CA on first use; issue what is missing or due."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)   # an existing, wider directory is narrowed: it holds keys
        with _locked(self.state_dir):
            ca = CertificateAuthority.load_or_create(self.state_dir / "ca", TRUST_DOMAIN)
            rotator = Rotator(ca)
            for workload, (role, name) in WORKLOADS.items():
                self.files[workload] = rotator.add(local_identity(role, name),
                                                   workload_files(self.state_dir, workload))
        self.rotator = rotator

    def __getitem__(self, workload: str) -> TlsFiles:
        return self.files[workload]

    def start(self) -> None:
        if self.rotator is not None:
            self.rotator.start()

    async def stop(self) -> None:
        if self.rotator is not None:
            await self.rotator.stop()

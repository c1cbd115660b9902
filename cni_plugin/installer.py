"""``msm-cni install``: put the plugin on a node, keep it there, take it away on exit.

Run by the installer DaemonSet (host paths mounted) or by hand:

1. the plugin: a launcher script ``<cni-bin-dir>/msm-cni`` and beside it, in
   ``<cni-bin-dir>/msm-cni.d``, the part of the ``msm`` package it runs: this
   package as ``msm/cni_plugin`` and the error tree as ``msm/sdk/errors.py``
   (with empty ``__init__.py`` files, so nothing else of msm is imported). The
   launcher execs ``--python`` (default: the interpreter running the installer)
   on ``msm.cni_plugin.main``, so the plugin needs no virtualenv on the host,
   only a Python 3.11+;
2. its kubeconfig (``--kubeconfig-out``), from the pod's service account
   (token, CA, ``KUBERNETES_SERVICE_HOST/PORT``) or from the override flags;
3. ``{"type": "msm-cni", ...}`` appended to the ``plugins`` chain of the first
   ``*.conflist`` (by name) in ``--cni-conf-dir``, or updated in place if it is
   there already.

Every file is written to a temporary name and renamed, so a runtime never reads
half of one. Then it re-checks every ``--interval`` seconds (a primary CNI that
rewrites its conflist drops our entry; service account tokens rotate) and on
SIGTERM or SIGINT undoes all three. ``msm-cni uninstall`` undoes them too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from msm.sdk import errors as sdk_errors

from . import config as cfg
from .errors import InstallError

PLUGIN_TYPE = "msm-cni"
PACKAGE_DIR = Path(__file__).resolve().parent
SDK_ERRORS = Path(sdk_errors.__file__).resolve()
# What the node's copy holds besides this package: the plugin imports nothing else of msm.
_COPY_INIT = b'"""The part of msm that msm-cni runs, copied here by `msm-cni install`."""\n'
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    bin_dir: Path
    conf_dir: Path
    kubeconfig_out: Path
    python: str
    server: str = ""
    token_file: str = ""
    ca_file: str = ""
    kubeconfig_in: str = ""
    plugin_conf: dict[str, Any]


def _write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Replace ``path`` with ``data`` by rename; False (nothing written) if equal."""
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    return True


# -- 1. the plugin -------------------------------------------------------------


def launcher_script(python: str, lib_dir: Path) -> str:
    code = f"import sys; sys.path.insert(0, {str(lib_dir)!r}); from msm.cni_plugin.main import main; sys.exit(main())"
    return (
        "#!/bin/sh\n"
        "# msm-cni launcher, written by `msm-cni install` and removed when it stops.\n"
        f'exec {_sh_quote(python)} -I -c {_sh_quote(code)} "$@"\n'
    )


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def install_plugin(options: Options) -> bool:
    lib_dir = options.bin_dir / f"{PLUGIN_TYPE}.d"
    shutil.rmtree(lib_dir / "cni_plugin", ignore_errors=True)  # the layout before the msm package
    target = lib_dir / "msm" / "cni_plugin"
    changed = _write_atomic(lib_dir / "msm" / "__init__.py", _COPY_INIT, 0o644)
    changed |= _write_atomic(lib_dir / "msm" / "sdk" / "__init__.py", _COPY_INIT, 0o644)
    changed |= _write_atomic(lib_dir / "msm" / "sdk" / "errors.py", SDK_ERRORS.read_bytes(), 0o644)
    for source in sorted(PACKAGE_DIR.glob("*.py")):
        changed |= _write_atomic(target / source.name, source.read_bytes(), 0o644)
    script = launcher_script(options.python, lib_dir).encode()
    changed |= _write_atomic(options.bin_dir / PLUGIN_TYPE, script, 0o755)
    return changed


def remove_plugin(bin_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (bin_dir / PLUGIN_TYPE).unlink()
    shutil.rmtree(bin_dir / f"{PLUGIN_TYPE}.d", ignore_errors=True)


# -- 2. the kubeconfig ---------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def render_kubeconfig(options: Options, environ: dict[str, str]) -> bytes:
    """A kubeconfig for the plugin, as JSON (valid YAML; read without PyYAML)."""
    if options.kubeconfig_in:
        return _read(options.kubeconfig_in, "kubeconfig")
    server = options.server
    if not server:
        host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise InstallError(
                "no API server: not running in a pod (KUBERNETES_SERVICE_HOST unset); "
                "pass --server with --token-file/--ca-file, or --kubeconfig-in"
            )
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    token_file = options.token_file or str(SERVICE_ACCOUNT_DIR / "token")
    ca_file = options.ca_file or (str(SERVICE_ACCOUNT_DIR / "ca.crt") if server.startswith("https:") else "")
    token = _read(token_file, "token file").decode().strip()
    cluster: dict[str, Any] = {"server": server}
    if ca_file:
        cluster["certificate-authority-data"] = base64.b64encode(_read(ca_file, "CA file")).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": PLUGIN_TYPE, "user": {"token": token}}],
        "contexts": [{"name": PLUGIN_TYPE, "context": {"cluster": "local", "user": PLUGIN_TYPE}}],
        "current-context": PLUGIN_TYPE,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


# -- 3. the conflist -----------------------------------------------------------


def first_conflist(conf_dir: Path) -> Path | None:
    try:
        found = sorted(p for p in conf_dir.iterdir() if p.name.endswith(".conflist") and p.is_file())
    except OSError:
        return None
    return found[0] if found else None


def _load_conflist(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InstallError(f"cannot read conflist {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("plugins"), list):
        raise InstallError(f"conflist {path} has no plugins list")
    return doc


def _dump_conflist(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def add_to_conflist(path: Path, entry: dict[str, Any]) -> bool:
    """Append ``entry`` to the chain, or replace our earlier one; idempotent."""
    doc = _load_conflist(path)
    plugins = [p for p in doc["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    doc["plugins"] = [*plugins, entry]
    mode = path.stat().st_mode & 0o777
    return _write_atomic(path, _dump_conflist(doc), mode)


def remove_from_conflists(conf_dir: Path) -> None:
    try:
        paths = sorted(p for p in conf_dir.iterdir() if p.name.endswith(".conflist") and p.is_file())
    except OSError:
        return
    for path in paths:
        try:
            doc = _load_conflist(path)
        except InstallError:
            continue
        kept = [p for p in doc["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
        if len(kept) != len(doc["plugins"]):
            doc["plugins"] = kept
            _write_atomic(path, _dump_conflist(doc), path.stat().st_mode & 0o777)


# -- the whole ---------------------------------------------------------------------


def install_once(options: Options, environ: dict[str, str]) -> Path | None:
    """Make the node right; the conflist changed, or None while there is none."""
    install_plugin(options)
    _write_atomic(options.kubeconfig_out, render_kubeconfig(options, environ), 0o600)
    conflist = first_conflist(options.conf_dir)
    if conflist is None:
        return None
    entry = {"type": PLUGIN_TYPE, **options.plugin_conf, "kubernetes": {"kubeconfig": str(options.kubeconfig_out)}}
    if add_to_conflist(conflist, entry):
        _log(f"added {PLUGIN_TYPE} to {conflist}")
    return conflist


def uninstall(options: Options) -> None:
    remove_from_conflists(options.conf_dir)
    remove_plugin(options.bin_dir)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        options.kubeconfig_out.unlink()
    _log(f"removed {PLUGIN_TYPE} from {options.conf_dir} and {options.bin_dir}")


def run(options: Options, interval: float, stop: threading.Event, environ: dict[str, str]) -> None:
    """Install, keep installed every ``interval`` s until ``stop``, then undo."""
    waiting_logged, first = False, True
    try:
        while True:
            try:
                conflist = install_once(options, environ)
            except InstallError as exc:
                if first:  # bad flags or no credentials: say so and leave nothing behind
                    raise
                _log(f"{exc}; trying again in {interval:g} s")  # e.g. a conflist caught mid-rewrite
            else:
                if conflist is None and not waiting_logged:
                    _log(f"no *.conflist in {options.conf_dir} yet; waiting for the primary CNI to write one")
                    waiting_logged = True
            first = False
            if stop.wait(interval):
                return
    finally:
        uninstall(options)


def _log(line: str) -> None:
    print(f"msm-cni install: {line}", file=sys.stderr, flush=True)


def _ports(value: str) -> list[int]:
    try:
        return [int(p) for p in value.split(",") if p]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected PORT[,PORT...], got {value!r}") from exc


def parse_args(argv: Sequence[str]) -> tuple[str, Options, float]:
    parser = argparse.ArgumentParser(prog="msm-cni", description="Install or uninstall the msm CNI plugin.")
    parser.add_argument("action", choices=["install", "uninstall"])
    parser.add_argument("--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"))
    parser.add_argument("--cni-conf-dir", type=Path, default=Path("/etc/cni/net.d"))
    parser.add_argument("--kubeconfig-out", type=Path, help="default: <cni-conf-dir>/msm-cni.kubeconfig")
    parser.add_argument("--server", default="", help="API server URL (default: in-cluster)")
    parser.add_argument("--token-file", default="", help="bearer token (default: the pod's service account)")
    parser.add_argument("--ca-file", default="", help="API server CA (default: the pod's service account)")
    parser.add_argument("--kubeconfig-in", default="", help="copy this kubeconfig instead of building one")
    parser.add_argument("--python", default=sys.executable, help="interpreter the launcher runs (host path)")
    parser.add_argument("--intercept-ports", type=_ports, default=list(cfg.DEFAULT_INTERCEPT_PORTS))
    parser.add_argument("--redirect-port", type=int, default=cfg.DEFAULT_REDIRECT_PORT)
    parser.add_argument("--proxy-uid", type=int, default=cfg.DEFAULT_PROXY_UID)
    parser.add_argument("--redirect-mode", choices=["nftables", "ebpf"], default=cfg.DEFAULT_MODE)
    parser.add_argument("--exclude-namespaces", default=",".join(cfg.DEFAULT_EXCLUDE_NAMESPACES))
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between re-checks")
    ns = parser.parse_args(list(argv))
    options = Options(
        bin_dir=ns.cni_bin_dir,
        conf_dir=ns.cni_conf_dir,
        kubeconfig_out=ns.kubeconfig_out or ns.cni_conf_dir / f"{PLUGIN_TYPE}.kubeconfig",
        python=ns.python,
        server=ns.server,
        token_file=ns.token_file,
        ca_file=ns.ca_file,
        kubeconfig_in=ns.kubeconfig_in,
        plugin_conf={
            "interceptPorts": ns.intercept_ports,
            "redirectPort": ns.redirect_port,
            "proxyUid": ns.proxy_uid,
            "redirectMode": ns.redirect_mode,
            "excludeNamespaces": [n for n in ns.exclude_namespaces.split(",") if n],
        },
    )
    return ns.action, options, ns.interval


def main(argv: Sequence[str]) -> int:
    action, options, interval = parse_args(argv)
    # The entry must be a config the plugin accepts: check it with the plugin's
    # own validation before touching the node.
    from .errors import CniError

    try:
        cfg.parse_conf({"cniVersion": "1.0.0", "name": "check", "type": PLUGIN_TYPE, **options.plugin_conf})
    except CniError as exc:
        print(f"msm-cni {action}: {exc}", file=sys.stderr)
        return 2
    if action == "uninstall":
        uninstall(options)
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run(options, interval, stop, dict(os.environ))
    except InstallError as exc:
        print(f"msm-cni install: {exc}", file=sys.stderr)
        return 1
    return 0

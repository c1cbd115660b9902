"""``msm-cni install`` against temporary CNI directories: what it writes, that it
keeps it there, and that SIGTERM/SIGINT take it all away again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msm.cni_plugin import installer, kube

PRIMARY = {
    "cniVersion": "1.0.0",
    "name": "k8s-pod-network",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


# An interpreter that does not have msm installed (the venv's base), like a node's python3.
BARE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def run_launcher(launcher: Path, command: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/1/ns/net", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(launcher)], input=stdin, env=env, capture_output=True, timeout=30, check=False)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def plugins(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text())["plugins"])
    except (OSError, ValueError):
        return []


def has_msm(path: Path) -> bool:
    return any(p.get("type") == "msm-cni" for p in plugins(path))


class Dirs:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.conf = root / "net.d"
        self.bin.mkdir()
        self.conf.mkdir()
        self.token = root / "token"
        self.token.write_text("token-1\n")
        self.ca = root / "ca.crt"
        self.ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        self.kubeconfig = root / "out" / "msm-cni.kubeconfig"

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable, "-m", "msm.cni_plugin.main", "install",
                "--cni-bin-dir", str(self.bin), "--cni-conf-dir", str(self.conf),
                "--kubeconfig-out", str(self.kubeconfig),
                "--server", "https://10.96.0.1:443", "--token-file", str(self.token), "--ca-file", str(self.ca),
                "--interval", "0.1", *extra,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


def stop(proc: subprocess.Popen[str], signum: int) -> str:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err


def test_install_keep_and_undo(dirs: Dirs) -> None:
    first = dirs.conf / "10-primary.conflist"
    first.write_text(json.dumps(PRIMARY))
    second = dirs.conf / "20-other.conflist"
    second.write_text(json.dumps({**PRIMARY, "name": "other"}))
    untouched = second.read_bytes()

    # The launcher runs an interpreter without msm installed, as on a node: the copy must be enough.
    proc = dirs.start("--intercept-ports", "554,8555", "--python", BARE_PYTHON)
    try:
        wait_for(lambda: has_msm(first), "the conflist entry")
        chain = plugins(first)
        assert chain[:2] == PRIMARY["plugins"]
        assert chain[2] == {
            "type": "msm-cni",
            "interceptPorts": [554, 8555],
            "redirectPort": 8554,
            "proxyUid": 1337,
            "redirectMode": "nftables",
            "excludeNamespaces": ["kube-system"],
            "kubernetes": {"kubeconfig": str(dirs.kubeconfig)},
        }
        assert second.read_bytes() == untouched

        # The kubeconfig: private, and what the plugin reads.
        assert dirs.kubeconfig.stat().st_mode & 0o777 == 0o600
        got = kube.load_kubeconfig(str(dirs.kubeconfig))
        assert (got.server, got.token, got.ca_data) == ("https://10.96.0.1:443", "token-1", dirs.ca.read_bytes())

        # The plugin: a launcher that runs the copied package, as a runtime would.
        launcher = dirs.bin / "msm-cni"
        assert os.access(launcher, os.X_OK)
        copy = dirs.bin / "msm-cni.d" / "msm"
        assert (copy / "cni_plugin" / "main.py").is_file() and (copy / "sdk" / "errors.py").is_file()
        assert "from msm.cni_plugin.main import main" in launcher.read_text()
        done = run_launcher(launcher, "VERSION", b'{"cniVersion": "1.0.0"}')
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["supportedVersions"][-1] == "1.1.0"
        # An error answer goes through the copied error tree: CNI JSON, no traceback.
        broken = run_launcher(launcher, "ADD", b"{")
        assert broken.returncode == 1 and b"Traceback" not in broken.stderr, broken.stderr
        assert json.loads(broken.stdout)["code"] == 6  # CNI: failure to decode content

        # The primary CNI rewrites its conflist: the entry comes back, once.
        first.write_text(json.dumps(PRIMARY))
        wait_for(lambda: has_msm(first), "the entry to be restored")
        # The service account token rotates: the kubeconfig follows.
        dirs.token.write_text("token-2\n")
        wait_for(lambda: kube.load_kubeconfig(str(dirs.kubeconfig)).token == "token-2", "the new token")
        assert [p["type"] for p in plugins(first)] == ["bridge", "portmap", "msm-cni"]
        # A conflist caught half-written is retried, not fatal.
        first.write_text('{"plugins": [')
        time.sleep(0.3)
        assert proc.poll() is None
        first.write_text(json.dumps(PRIMARY))
        wait_for(lambda: has_msm(first), "the entry after a broken conflist")
    finally:
        err = stop(proc, signal.SIGTERM)

    assert plugins(first) == PRIMARY["plugins"]
    assert second.read_bytes() == untouched
    assert sorted(p.name for p in dirs.bin.iterdir()) == []
    assert not dirs.kubeconfig.exists()
    assert "removed msm-cni" in err and "trying again" in err


def test_waits_for_a_conflist_and_undoes_on_sigint(dirs: Dirs) -> None:
    proc = dirs.start()
    try:
        wait_for(lambda: (dirs.bin / "msm-cni").exists(), "the launcher")
        time.sleep(0.3)
        assert list(dirs.conf.glob("*.conflist")) == []
        (dirs.conf / "05-late.conflist").write_text(json.dumps(PRIMARY))
        wait_for(lambda: has_msm(dirs.conf / "05-late.conflist"), "the late conflist entry")
    finally:
        err = stop(proc, signal.SIGINT)
    assert plugins(dirs.conf / "05-late.conflist") == PRIMARY["plugins"]
    assert not (dirs.bin / "msm-cni").exists()
    assert "waiting for the primary CNI" in err


def test_refuses_what_the_plugin_would_refuse(dirs: Dirs) -> None:
    proc = dirs.start("--intercept-ports", "8554")
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2 and "would loop" in err
    assert list(dirs.bin.iterdir()) == []


def test_no_credentials_leaves_nothing_behind(dirs: Dirs) -> None:
    (dirs.conf / "10-primary.conflist").write_text(json.dumps(PRIMARY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    proc = subprocess.run(
        [sys.executable, "-m", "msm.cni_plugin.main", "install", "--cni-bin-dir", str(dirs.bin),
         "--cni-conf-dir", str(dirs.conf)],
        env=env, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "KUBERNETES_SERVICE_HOST" in proc.stderr
    assert list(dirs.bin.iterdir()) == [] and plugins(dirs.conf / "10-primary.conflist") == PRIMARY["plugins"]


def test_unwritable_bin_dir_is_one_line(dirs: Dirs) -> None:
    """A --cni-bin-dir that cannot be written: one line and exit status 1, not a traceback."""
    (dirs.conf / "10-primary.conflist").write_text(json.dumps(PRIMARY))
    blocker = dirs.bin / "a-file"
    blocker.write_text("")
    dirs.bin = blocker / "bin"
    proc = dirs.start()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1 and "cannot write" in err and "Traceback" not in err, err
    assert plugins(dirs.conf / "10-primary.conflist") == PRIMARY["plugins"]


def test_in_cluster_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_text("CA PEM")
    monkeypatch.setattr(installer, "SERVICE_ACCOUNT_DIR", sa)
    options = installer.parse_args(["install", "--cni-conf-dir", str(tmp_path)])[1]
    assert options.kubeconfig_out == tmp_path / "msm-cni.kubeconfig"
    doc = json.loads(
        installer.render_kubeconfig(options, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    )
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://[fd00::1]:6443"
    assert cluster["certificate-authority-data"] == "Q0EgUEVN"  # base64("CA PEM")
    assert doc["users"][0]["user"] == {"token": "sa-token"}


def test_launcher_quotes_paths(tmp_path: Path) -> None:
    script = installer.launcher_script("/opt/py thon's/bin/python3", tmp_path / "it's")
    assert script.startswith("#!/bin/sh\n")
    assert "exec '/opt/py thon'\"'\"'s/bin/python3' -I -c" in script

"""What `pip install .` installs: the distribution media-streaming-mesh is the one package `msm`.

The repository keeps a folder per component at the top (sdk/, stub/, control_plane/...) and
links each into msm/ (msm/sdk -> ../sdk), so the wheel must hold real files under msm/ and
nothing else: no top-level `sdk` or `stub` a user's own code could collide with, no benchmark
harness (its own distribution, media-streaming-mesh-bench, behind the `bench` extra), no
tests. The node image (docker/Dockerfile) is built from exactly this.

The wheel is built once for this module from a copy of exactly what docker/Dockerfile copies
into its build stage (so the image builds without bench/ or tests/, and build/ and the .egg-info
never land in the repository), offline and without build isolation, with the venv's own
setuptools and cffi; that compiles the native engine, a few seconds to half a minute.
"""

from __future__ import annotations

import ast
import configparser
import csv
import io
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DIST = "media-streaming-mesh"
COMPONENTS = ("sdk", "protos", "stub", "control_plane", "rtp_proxy", "webhook", "cni_plugin", "ext", "runtime",
              "security")
SCRIPTS = {
    "msm": "msm.cli:main",
    "msm-control-plane": "msm.control_plane.main:main",
    "msm-proxy": "msm.rtp_proxy.main:main",
    "msm-stub": "msm.stub.main:main",
    "msm-webhook": "msm.webhook.main:main",
    "msm-cni": "msm.cni_plugin.main:main",
}
# Nothing generated or local is copied; *.so and ext/_engine.c so that the build compiles afresh.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache", ".hypothesis",
    "*.so", "*.o", "_engine.c", "_blast.c", "results",
)


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as zf:
            self.names = zf.namelist()
            (self.dist_info,) = {n.split("/", 1)[0] for n in self.names if n.split("/", 1)[0].endswith(".dist-info")}
            self.record = [row[0] for row in csv.reader(io.StringIO(zf.read(f"{self.dist_info}/RECORD").decode()))
                           if row]
            self.metadata = HeaderParser().parsestr(zf.read(f"{self.dist_info}/METADATA").decode())
            entry_points = configparser.ConfigParser(delimiters=("=",))
            entry_points.optionxform = str  # type: ignore[assignment,method-assign]  # keep the names' case
            entry_points.read_string(zf.read(f"{self.dist_info}/entry_points.txt").decode())
            self.entry_points = entry_points
            self.top_level = zf.read(f"{self.dist_info}/top_level.txt").decode().split()

    def read(self, name: str) -> str:
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(name).decode()


def docker_build_context() -> list[str]:
    """The repository paths the Dockerfile's build stage COPYs (``COPY <src>... <dest>``)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources.extend(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))
    return sources


def test_the_image_copies_every_component_and_nothing_else() -> None:
    sources = docker_build_context()
    links = {p.name for p in (ROOT / "msm").iterdir() if p.is_symlink()}
    assert links == set(COMPONENTS)
    assert {os.readlink(ROOT / "msm" / name) for name in links} == {f"../{name}" for name in links}
    assert set(sources) == {"pyproject.toml", "setup.py", "README.md", "msm", *COMPONENTS}
    assert len(sources) == len(set(sources))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    source.mkdir()
    for name in docker_build_context():
        if (ROOT / name).is_dir():
            # symlinks=True keeps msm/<component> -> ../<component> as links: the build must follow them.
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=_IGNORE)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = work / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, env=env, cwd=work,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (built,) = out.glob("*.whl")
    return Wheel(built)


def test_the_distribution_is_media_streaming_mesh(wheel: Wheel) -> None:
    assert wheel.metadata["Name"] == DIST
    assert wheel.path.name.startswith("media_streaming_mesh-")
    # The benchmark harness is reachable only through the extra, never a plain dependency.
    requires = wheel.metadata.get_all("Requires-Dist") or []
    bench = [r for r in requires if r.startswith("media-streaming-mesh-bench")]
    assert bench and all("extra ==" in r and "bench" in r.split("extra ==", 1)[1] for r in bench), requires


def test_the_only_top_level_import_name_is_msm(wheel: Wheel) -> None:
    assert wheel.record, "empty RECORD"
    assert set(wheel.record) == set(wheel.names)
    tops = {name.split("/", 1)[0] for name in wheel.record} - {wheel.dist_info}
    assert tops == {"msm"}, f"top-level entries besides msm: {sorted(tops - {'msm'})}"
    assert wheel.top_level == ["msm"]
    assert not [n for n in wheel.record if ".data/" in n.split("/", 1)[0]]


def test_every_component_is_a_subpackage_of_msm(wheel: Wheel) -> None:
    for component in COMPONENTS:
        assert f"msm/{component}/__init__.py" in wheel.record, component
    assert "msm/__init__.py" in wheel.record
    for module in ("cli", "mesh", "bench", "gst_source"):
        assert f"msm/{module}.py" in wheel.record, module


def test_data_files_are_in_the_wheel(wheel: Wheel) -> None:
    static = {n.rsplit("/", 1)[1] for n in wheel.record if n.startswith("msm/control_plane/static/")}
    assert {"index.html", "app.js", "style.css"} <= static
    assert {"msm/ext/engine.c", "msm/ext/engine.h"} <= set(wheel.record)
    assert "msm/ext/build.py" in wheel.record


def test_the_native_engine_is_compiled_when_a_compiler_exists(wheel: Wheel) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler: the engine is optional and the wheel has the Python path only")
    assert [n for n in wheel.record if n.startswith("msm/ext/_engine") and n.endswith(".so")]


def test_no_benchmark_tests_or_build_leftovers(wheel: Wheel) -> None:
    for name in wheel.record:
        parts = name.split("/")
        assert not ({"msm_bench", "bench", "tests"} & set(parts[:-1])), name
        assert parts[-1] not in ("bench.json", "conftest.py"), name
        assert "__pycache__" not in parts and not name.endswith(".pyc"), name
        assert not parts[-1].startswith("test_"), name
    assert "msm/bench.py" in wheel.record  # the `msm bench` command itself, which imports msm_bench lazily


def test_console_scripts_name_modules_in_the_wheel(wheel: Wheel) -> None:
    scripts = dict(wheel.entry_points["console_scripts"])
    assert scripts == SCRIPTS
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        path = module.replace(".", "/") + ".py"
        assert path in wheel.record, f"{script}: {path} is not in the wheel"
        tree = ast.parse(wheel.read(path))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert function in defined, f"{script}: {module} defines no {function}()"


def test_the_wheel_imports_on_its_own(wheel: Wheel, tmp_path: Path) -> None:
    """Unpacked, the wheel's msm is self-contained: every entry point's module imports from it
    (not from the repository's links), with the venv's dependencies."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel.path) as zf:
        zf.extractall(target)
    modules = sorted({target.partition(":")[0] for target in SCRIPTS.values()} |
                     {f"msm.{c}" for c in COMPONENTS})
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


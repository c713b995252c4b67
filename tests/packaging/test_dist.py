"""The sdist and the wheel: complete, accepted by twine, installable into a fresh venv.

Offline on purpose: the build runs without isolation (setuptools comes from the dev
extra) and the fresh venv installs only the wheel, with ``--no-deps``; the
dependencies it imports come from this test's own environment through a ``.pth`` file.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from echod import __version__

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SDIST_MUST_HOLD = (
    "LICENSE",
    "loadtest/_rrloop.c",  # built where the sdist is installed, if a compiler is there
    "echod/_uring.c",  # built where liburing is installed (the uring backend)
    "README.md",
    "pyproject.toml",
    "systemd/echod.service",
    "systemd/echod.socket",
    "systemd/echod-standalone.service",
    "systemd/echod.toml",
    "systemd/install.sh",
    "systemd/README.md",
    "docs/man/echod.8",
    "docs/man/echod-bench.1",
    "echod/cli.py",
    "loadtest/cli.py",
)


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel built from a copy of the tree, as a fresh clone would hold it."""
    base = tmp_path_factory.mktemp("dist")
    tree = base / "tree"
    files = run("git", "ls-files", "-co", "--exclude-standard", cwd=ROOT).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    out = base / "out"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, tree)
    return out


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


def test_sdist_holds_the_units_the_man_pages_and_the_license(dist: Path) -> None:
    sdist = only(dist, f"echod-{__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = [name for name in SDIST_MUST_HOLD if name not in names]
    assert not missing


def test_wheel_metadata_declares_license_pythons_and_os(dist: Path) -> None:
    # A platform wheel where a compiler built echod-bench's optional C loop, else py3-none-any.
    wheel = only(dist, f"echod-{__version__}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(archive.read(f"echod-{__version__}.dist-info/METADATA"))
        license_text = archive.read(f"echod-{__version__}.dist-info/licenses/LICENSE")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert license_text.startswith(b"MIT License")
    classifiers = set(metadata.get_all("Classifier") or [])
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert metadata["Requires-Python"] == ">=3.10"
    assert "echod/py.typed" in names and "loadtest/py.typed" in names


def test_twine_check_passes(dist: Path) -> None:
    files = sorted(dist.iterdir())
    result = run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert result.stdout.count("PASSED") == len(files) == 2


def fresh_venv(dist: Path, tmp_path: Path) -> Path:
    """A new venv with the wheel installed; its dependencies (uvloop, psutil, pytest...)
    come from this environment, after the venv's own site-packages, so the echod it
    imports is the wheel's. Returns the venv's directory."""
    wheel = only(dist, "*.whl")
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel)
    site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "deps-from-test-env.pth").write_text("\n".join(sorted(ours)) + "\n")
    return target


def test_wheel_installs_into_a_fresh_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    target = fresh_venv(dist, tmp_path)
    python = target / "bin" / "python"
    # Not from the source tree: python -c puts the working directory first on sys.path.
    where = run(
        python,
        "-c",
        "import echod, loadtest; print(echod.__file__, loadtest.__file__)",
        cwd=tmp_path,
    )
    assert all(path.startswith(str(target)) for path in where.stdout.split())
    assert (
        run(target / "bin" / "echod", "--version", cwd=tmp_path).stdout.strip()
        == f"echod {__version__}"
    )
    bench_help = run(target / "bin" / "echod-bench", "--help", cwd=tmp_path).stdout
    assert "--connections" in bench_help


ANOTHER_PROJECT = """
import socket

import pytest


def test_echo(echo_server, request):
    for plugin, dist in request.config.pluginmanager.list_plugin_distinfo():
        if dist.metadata["Name"] == "echod":
            print("plugin from", plugin.__file__, "declared by", dist._path)
    with socket.create_connection(echo_server.address, timeout=10) as client:
        client.sendall(b"from another project")
        assert client.recv(100) == b"from another project"
"""


def test_the_installed_wheel_gives_other_projects_the_fixtures(dist: Path, tmp_path: Path) -> None:
    """``pip install echod``, then a project's test uses ``echo_server``: no conftest,
    no configuration, no -p."""
    target = fresh_venv(dist, tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_client.py").write_text(ANOTHER_PROJECT)
    (project / "pytest.ini").write_text("[pytest]\n")
    result = run(
        target / "bin" / "python", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
        "test_client.py", cwd=project,
    )  # fmt: skip
    assert "1 passed" in result.stdout
    # The fixture came from the wheel's plugin, declared by the wheel's entry point (this
    # checkout's editable install, seen through the .pth, declares one too).
    assert f"plugin from {target}" in result.stdout, result.stdout
    assert f"declared by {target}" in result.stdout, result.stdout


def test_without_liburing_the_wheel_still_builds_and_uring_says_why(
    dist: Path, tmp_path: Path
) -> None:
    """liburing's header hidden (an empty file bind-mounted over it, in a mount
    namespace of its own): the extension is skipped, the build succeeds, and the
    backend is refused in one line instead."""
    header = Path("/usr/include/liburing.h")
    unshare = shutil.which("unshare")
    if not header.exists() or unshare is None or os.geteuid() != 0:
        pytest.skip("needs liburing's header, unshare and root to hide the header")
    sdist = only(dist, "*.tar.gz")
    out = tmp_path / "out"
    hide = f'mount --bind /dev/null {header} && exec "$@"'
    run(
        unshare, "--mount", "--propagation", "private", "sh", "-c", hide, "sh",
        sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
        "--quiet", "--wheel-dir", out, sdist,
    )  # fmt: skip
    wheel = only(out, "*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(name.startswith("echod/_uring") and name.endswith(".so") for name in names)
    assert any(name.startswith("loadtest/_rrloop") for name in names), "only uring is skipped"
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel)
    refused = subprocess.run(
        [python, "-m", "echod", "--backend", "uring", "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "built without liburing" in refused.stderr

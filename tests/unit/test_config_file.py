"""--config FILE and --check-config, as far as the systemd units use them (issue 16).

Minimal on purpose: the lead's control-plane work owns the full file support.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from echod.cli import load_config
from echod.config import ConfigError, from_file


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "echod.toml"
    path.write_text(text)
    return str(path)


def test_file_values_sit_under_the_environment_and_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "poll"\nworkers = 3\nport = 7\nhigh_water = "128K"\n')
    config, _ = load_config(["--config", path, "--port", "9"], {"ECHOD_WORKERS": "2"})
    assert (config.backend, config.workers, config.port, config.high_water) == (
        "poll",
        2,
        9,
        128 << 10,
    )


def test_listen_is_an_array(tmp_path: Path) -> None:
    assert from_file(write(tmp_path, 'listen = ["127.0.0.1:1", "udp:[::1]:2"]\n')) == {
        "listen": ("127.0.0.1:1", "udp:[::1]:2")
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("prot = 7\n", "unknown key 'prot'"),
        ('port = "x"\n', "port: 'x' is not a whole number"),
        ("workers = true\n", "workers: True is not a value"),
        ('log_level = "loud"\n', "log_level: choose from"),
        ("port = [\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=reason) as caught:
        from_file(path)
    assert str(caught.value).startswith(f"{path}: ")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echod", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_exits_0_or_2_and_binds_nothing(tmp_path: Path) -> None:
    # A port in use: a check that went on to bind would exit 1 with EADDRINUSE.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        good = write(tmp_path, f'backend = "epoll"\nhost = "127.0.0.1"\nport = {port}\n')
        result = check("--config", good, "--check-config")
    assert (result.returncode, result.stderr) == (0, "")
    bad = write(tmp_path, "graceful_timeout = -1\n")
    result = check("--config", bad, "--check-config")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "graceful_timeout" in result.stderr
    missing = check("--config", str(tmp_path / "absent.toml"), "--check-config")
    assert missing.returncode == 2 and "No such file" in missing.stderr

"""Socket activation of a datagram socket (ListenDatagram=), with the real tool."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.support import ROOT
from tests.udp.udp_support import receive_all


def test_systemd_socket_activate_datagram() -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate missing under CI=true: apt-get install systemd")
        pytest.skip("systemd-socket-activate not installed: apt-get install systemd")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "ECHOD_"))}
    proc = subprocess.Popen(
        [tool, "--datagram", "-l", f"127.0.0.1:{port}", "--fdname=udp-echo",
         "-E", "PYTHONPATH=" + os.pathsep.join(sys.path),
         sys.executable, "-m", "echod", "--log-level", "debug"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(20)
            # The first datagram starts echod, which then reads it from the socket.
            deadline = time.monotonic() + 20
            while proc.poll() is None:
                sock.sendto(b"activated", ("127.0.0.1", port))
                if receive_all(sock, quiet=1.0):
                    break
                assert time.monotonic() < deadline, "no answer from the activated echod"
            sock.sendto(b"again", ("127.0.0.1", port))
            assert sock.recv(100) == b"again"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert f"listening on udp:127.0.0.1:{port}" in stderr, stderr
    assert "Traceback" not in stderr

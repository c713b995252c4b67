"""echod-bench --proxy-protocol: every connection starts with a PROXY header, so the
bench exercises echod's proxy-v1:/proxy-v2: listeners like a load balancer would."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT, echod


@pytest.mark.parametrize(("version", "workload"), [("v1", "churn"), ("v2", "rr")])
def test_the_header_carries_the_given_address_and_every_byte_is_echoed(
    version: str, workload: str
) -> None:
    listen = f"proxy-{version}:127.0.0.1:0"
    with echod("--listen", listen, "--proxy-from", "127.0.0.1", "--log-level", "debug") as server:
        args = (
            "--port", str(server.port), "--workload", workload, "--connections", "4",
            "--duration", "1", "--warmup", "0.2", "--no-progress", "--processes", "1",
            "--proxy-protocol", version, "--proxy-address", "192.0.2.77",
        )  # fmt: skip
        bench = subprocess.run(
            [sys.executable, "-m", "loadtest", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert bench.returncode == 0, bench.stdout + bench.stderr
        server.wait_for(r"proxy: connection from 192\.0\.2\.77 via 127\.0\.0\.1")
        assert not re.search(r"proxy_(header|peer)=", server.report())


def test_proxy_address_without_the_protocol_is_a_usage_error() -> None:
    bench = subprocess.run(
        [sys.executable, "-m", "loadtest", "--proxy-address", "192.0.2.1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bench.returncode == 2 and "needs --proxy-protocol" in bench.stderr

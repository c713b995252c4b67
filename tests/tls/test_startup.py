"""A TLS setting or file that cannot be used: one line and exit 2, before listening."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, TIMEOUT
from tests.tls.tls_support import Pki


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echod", "--listen", "tls:127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
    )  # fmt: skip


def cases(pki: Pki, tmp: Path) -> dict[str, tuple[list[str], str]]:
    garbage = tmp / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cert, key, other_key = pki.path("server.pem"), pki.path("server.key"), pki.path("other.key")
    return {
        "no-certificate": ([], "needs --tls-cert"),
        "missing-file": (["--tls-cert", str(tmp / "none.pem"), "--tls-key", key], "no such file"),
        "garbage": (["--tls-cert", str(garbage), "--tls-key", key], "does not load"),
        "key-of-another": (["--tls-cert", cert, "--tls-key", other_key], "does not load"),
        "no-key": (["--tls-cert", cert], "does not load"),
        "bad-client-ca": (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(garbage)], "client CA"),
        "bad-sni": (["--tls-cert", cert, "--tls-key", key, "--tls-sni", "nameonly"], "NAME=CERT"),
        "bad-version": (["--tls-cert", cert, "--tls-key", key, "--tls-min-version", "1.1"], "1.1"),
        "sni-without-cert": (["--tls-sni", f"a={cert}"], "--tls-cert"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["no-certificate", "missing-file", "garbage", "key-of-another", "no-key",
     "bad-client-ca", "bad-sni", "bad-version", "sni-without-cert"],
)  # fmt: skip
def test_unusable_tls_settings_exit_2_with_one_line(pki: Pki, tmp_path: Path, case: str) -> None:
    args, says = cases(pki, tmp_path)[case]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("echod: error:")
    assert says in lines[0]

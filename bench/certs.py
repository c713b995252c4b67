"""Throwaway certificates for the TLS cells, made with the ``openssl`` CLI at bench time.

Keys live in a temporary directory for one run and are never written to the tree.
Both are self-signed for 127.0.0.1 and localhost; echod-bench runs ``--insecure`` in
the TLS cells, so the generator spends its core on the handshake, not on verifying.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The key types the handshake cells compare: what the server signs with per handshake.
KEYS = {
    "ecdsa": ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
    "rsa": ("-newkey", "rsa:2048"),
}
LABELS = {"ecdsa": "ECDSA P-256", "rsa": "RSA 2048"}


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


class CertificateError(Exception):
    """openssl is missing or refused: the TLS cells cannot run (one line)."""


def make(directory: Path, kinds: tuple[str, ...] = tuple(KEYS)) -> dict[str, Certificate]:
    """One self-signed certificate and key per kind in ``directory``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("no openssl here: the TLS cells are skipped")
    made = {}
    for kind in kinds:
        found = Certificate(directory / f"{kind}-cert.pem", directory / f"{kind}-key.pem")
        proc = subprocess.run(
            [openssl, "req", "-x509", *KEYS[kind], "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(found.key), "-out", str(found.cert)],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CertificateError(f"openssl req ({kind}) failed: {last}")
        made[kind] = found
    return made

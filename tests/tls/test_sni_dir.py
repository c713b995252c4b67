"""``--tls-sni-dir``: each certificate in a directory serves the names it carries, the
later-expiring one wins a name, ``--tls-sni`` wins over the directory, and a reload
re-reads it. Names are read with ``cryptography`` (the ``tls`` extra)."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from echod.tls_directory import read_directory
from tests.support import Echod, echod, require_tool, wait_until
from tests.tls.test_auth import common_name, echoes
from tests.tls.tls_support import Pki, client_context, leaf

LISTEN = ("--backend", "epoll", "--listen", "tls:127.0.0.1:0")


def issue(
    pki: Pki, into: Path, name: str, sans: str, days: int = 2, combined: bool = False
) -> None:
    """A server certificate from the test CA, CN ``name``, moved into ``into`` as
    NAME.pem with NAME.key beside it, or with the key inside (``combined``)."""
    leaf(f"dir-{name}", "ca", name, sans, "serverAuth", pki.directory, days=days)
    cert, key = pki.directory / f"dir-{name}.pem", pki.directory / f"dir-{name}.key"
    if combined:
        (into / f"{name}.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    else:
        shutil.copy(cert, into / f"{name}.pem")
        shutil.copy(key, into / f"{name}.key")


@pytest.fixture(scope="module")
def certificates(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sni-dir")
    issue(pki, directory, "other.test", "DNS:other.test")
    issue(pki, directory, "wild", "DNS:*.wild.test", combined=True)
    issue(pki, directory, "dup-soon", "DNS:dup.test", days=2)
    issue(pki, directory, "dup-later", "DNS:dup.test", days=30)
    (directory / "README").write_text("not a certificate: ignored\n")
    return directory


@pytest.fixture(scope="module")
def client(pki: Pki) -> ssl.SSLContext:
    return client_context(pki)


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("other.test", "other.test"),  # key beside the certificate
        ("a.wild.test", "wild"),  # key inside the PEM; *.wild.test matches one label
        ("dup.test", "dup-later"),  # two certificates for one name: the later expiry
        ("localhost", "localhost"),  # not in the directory: --tls-cert
    ],
)
def test_each_name_gets_the_certificate_that_carries_it(
    certificates: Path, pki: Pki, client: ssl.SSLContext, asked: str, served: str
) -> None:
    with echod(*LISTEN, *pki.server_args(), "--tls-sni-dir", str(certificates)) as server:
        assert common_name(echoes(server, client, asked)) == served


def test_a_name_given_with_tls_sni_wins_over_the_directory(
    certificates: Path, pki: Pki, client: ssl.SSLContext, tmp_path: Path
) -> None:
    issue(pki, tmp_path, "dup-given", "DNS:dup.test")
    given = f"dup.test={tmp_path / 'dup-given.pem'},{tmp_path / 'dup-given.key'}"
    args = ("--tls-sni-dir", str(certificates), "--tls-sni", given)
    with echod(*LISTEN, *pki.server_args(), *args) as server:
        assert common_name(echoes(server, client, "dup.test")) == "dup-given"
        assert common_name(echoes(server, client, "other.test")) == "other.test"


def test_a_reload_serves_a_certificate_dropped_into_the_directory(
    pki: Pki, client: ssl.SSLContext, tmp_path: Path
) -> None:
    issue(pki, tmp_path, "other.test", "DNS:other.test")
    args = ("--workers", "2", "--tls-sni-dir", str(tmp_path))
    with echod(*LISTEN, *pki.server_args(), *args) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"not valid for 'late\.test'"):
            echoes(server, client, "late.test")  # the default certificate, for localhost
        issue(pki, tmp_path, "late", "DNS:late.test")
        server.signal(signal.SIGHUP)
        server.wait_for("reload done: generation 2")

        def served_late() -> bool:
            try:
                return common_name(echoes(server, client, "late.test")) == "late"
            except ssl.SSLCertVerificationError:  # an old worker, still draining
                return False

        assert wait_until(served_late)


def test_a_certificate_without_a_subject_alt_name_serves_its_common_name(
    pki: Pki, tmp_path: Path
) -> None:
    leaf("dir-cn-only", "ca", "cn-only.test", "DNS:unused", "serverAuth", pki.directory)
    # The same key and CN, self-signed without extensions: no subjectAltName at all.
    key = pki.directory / "dir-cn-only.key"
    shutil.copy(key, tmp_path / "cn.key")
    subprocess.run(
        [require_tool("openssl"), "req", "-x509", "-new", "-key", str(key), "-subj", "/CN=CN-Only.Test.",
         "-days", "2", "-out", str(tmp_path / "cn.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (entry,) = read_directory(str(tmp_path))
    assert (entry.name, entry.cert, entry.key) == (
        "cn-only.test",
        str(tmp_path / "cn.pem"),
        str(tmp_path / "cn.key"),
    )


def bad_start(*args: str, env: dict[str, str] | None = None) -> str:
    server = Echod(*LISTEN, *args, env=env, wait=False)
    assert server.proc.wait(30) == 2, server.log
    assert "Traceback" not in server.log
    return server.log


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "No such file or directory"),
        ("empty", "holds no certificate"),
        ("no-key", "has no key: put it in the same PEM file or in lonely.key"),
        ("garbage", "is not a PEM certificate"),
    ],
)
def test_a_directory_that_cannot_serve_is_one_line_and_exit_2(
    pki: Pki, tmp_path: Path, layout: str, message: str
) -> None:
    directory = tmp_path / "certs"
    if layout != "missing":
        directory.mkdir()
    if layout == "no-key":
        shutil.copy(pki.path("other.pem"), directory / "lonely.pem")
    if layout == "garbage":
        (directory / "bad.crt").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    log = bad_start(*pki.server_args(), "--tls-sni-dir", str(directory))
    assert message in log


def test_without_cryptography_it_says_which_extra_to_install(pki: Pki, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "cryptography"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    log = bad_start(
        *pki.server_args(),
        "--tls-sni-dir",
        str(tmp_path),
        env={"PYTHONPATH": str(shadow.parent)},
    )
    assert "pip install 'echod[tls]'" in log


@pytest.fixture(autouse=True)
def _no_stray_leaves(pki: Pki) -> Iterator[None]:
    """The leaves issued here are made in the session's PKI directory; tidy them."""
    yield
    for made in pki.directory.glob("dir-*"):
        made.unlink()

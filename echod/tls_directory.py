"""``--tls-sni-dir DIR``: every certificate in a directory, served to the names it carries.

Dropping a certificate in the directory and reloading (SIGHUP) is how many sites are
run (HAProxy's ``crt`` directory, Caddy, cert-manager's output): the names come from
the certificate itself, its subjectAltName DNS names, or its common name without one.
The standard library has no public X.509 parser, so this reads them with the
``cryptography`` package, the optional ``tls`` extra; the plain TLS listener and
``--tls-sni NAME=CERT`` need only the standard library.

A certificate file is ``*.pem``, ``*.crt`` or ``*.cer``, leaf first; its key is in the
same file or beside it as the same name with ``.key``. PEM files holding no
certificate (a key) are skipped. Two certificates for one name: the one that expires
later is served, so a renewed certificate can be dropped beside the old one.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from echod.config import ConfigError, SniEntry

SUFFIXES = (".pem", ".crt", ".cer")
CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY = b"PRIVATE KEY-----"
EXTRA = "pip install 'echod[tls]'"


def read_directory(directory: str) -> tuple[SniEntry, ...]:
    """One entry per name the directory's certificates carry; ConfigError (one line)
    if it cannot be read, holds no certificate, or a certificate has no key."""
    x509 = _x509()
    try:
        files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in SUFFIXES)
    except OSError as exc:
        raise ConfigError(f"--tls-sni-dir {directory}: {exc.strerror or exc}") from None
    chosen: dict[str, tuple[datetime, SniEntry]] = {}
    for path in files:
        if not path.is_file():
            continue
        data = _read(path)
        if CERTIFICATE not in data:
            continue  # a key, or a CA bundle's neighbour: not a certificate to serve
        try:
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise ConfigError(f"--tls-sni-dir: {path} is not a PEM certificate: {exc}") from None
        key = None if PRIVATE_KEY in data else _key_beside(path)
        expires = _not_after(certificate)
        for name in names_of(certificate, x509):
            entry = SniEntry(name, str(path), key)
            if name not in chosen or expires > chosen[name][0]:
                chosen[name] = (expires, entry)
    if not chosen:
        raise ConfigError(f"--tls-sni-dir {directory} holds no certificate ({', '.join(SUFFIXES)})")
    return tuple(entry for _, (_, entry) in sorted(chosen.items()))


def names_of(certificate: Any, x509: Any) -> list[str]:
    """The DNS names a certificate is for: subjectAltName, else the common name."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        names = [attribute.value for attribute in common]
    return [str(name).lower().rstrip(".") for name in names if name]


def _x509() -> Any:
    try:
        from cryptography import x509
    except ImportError:
        raise ConfigError(
            f"--tls-sni-dir reads certificate names with the cryptography package: {EXTRA}"
        ) from None
    return x509


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--tls-sni-dir: {path}: {exc.strerror or exc}") from None


def _key_beside(path: Path) -> str:
    key = path.with_suffix(".key")
    if not os.path.isfile(key):
        raise ConfigError(
            f"--tls-sni-dir: {path} has no key: put it in the same PEM file or in {key.name}"
        )
    return str(key)


def _not_after(certificate: Any) -> datetime:
    when = getattr(certificate, "not_valid_after_utc", None)  # cryptography 42+
    if when is None:
        when = certificate.not_valid_after.replace(tzinfo=timezone.utc)
    return when  # type: ignore[no-any-return]

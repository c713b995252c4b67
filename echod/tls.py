"""TLS for ``tls:`` listeners: the server context, built once from the settings, and the
rules every backend follows around the handshake and the close.

:func:`build_context` is a pure function of :class:`TlsSettings`: it reads the files,
builds a fresh :class:`ssl.SSLContext` (one per SNI name too) and raises one
:class:`TlsError` line when anything is wrong. Start-up calls it once (a bad file is
exit 2); a reload calls it again and, only if it succeeded, hands the new context to
:meth:`TlsEndpoint.swap`. Every TLS listener of a process shares one endpoint, and
each accepted connection takes ``endpoint.context`` once, when it is wrapped: new
connections get the new certificate, open ones keep the context they started with.

The client's close_notify ends only its direction, on every backend and for both
versions: the echo still owed is sent, then echod's close_notify. TLS 1.3 (RFC 8446
§6.1) asks for exactly that. For TLS 1.2, RFC 5246 §7.2.1 says to answer "immediately,
discarding any pending writes", and echod does answer at once when nothing is owed (the
usual case: a client that sends close_notify has read its echo). When echo is owed, it
was handed to an ``SSL_write`` that blocked part-way; OpenSSL requires that write to be
completed with the same bytes before anything else, the alert included, can follow its
records, so the reactor finishes it; asyncio's and uvloop's SSL protocols flush their
write buffer before their close_notify whatever the version (they have no
``write_eof``), and threads and gevent never owe more than the read they are sending.

Only the standard library is used. Certificate names for the expiry metric come from
``ssl._ssl._test_decode_cert``, the stdlib's own (private, but present since 2.7)
X.509 decoder, because the public API decodes only a peer's certificate.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from echod.config import TLS_VERSIONS, Config, ConfigError, SniEntry
from echod.service import ServiceError
from echod.tls_counters import FAILURE_REASONS, TlsCounters
from echod.tls_directory import read_directory

log = logging.getLogger("echod")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
assert tuple(VERSIONS) == TLS_VERSIONS
# Backends whose connections can be wrapped; another one (io_uring) refuses tls: listeners.
BACKENDS = frozenset(
    {
        "epoll",
        "poll",
        "select",
        "kqueue",
        "devpoll",
        "selectors",
        "asyncio",
        "uvloop",
        "threads",
        "gevent",
    }
)


class TlsError(ConfigError):
    """A TLS setting or file that cannot be used; one line for the operator."""


class UnsupportedBackend(ServiceError):
    """A tls: listener given to a backend that cannot wrap its connections."""


def check_tls_backend(name: str, wanted: bool) -> None:
    """One line for the operator if TLS listeners are ``wanted`` and ``name`` cannot
    serve them (:attr:`echod.net.listener_set.Listeners.serve_tls`)."""
    if wanted and name not in BACKENDS:
        raise UnsupportedBackend(
            f"backend {name} does not serve tls: listeners; use a reactor backend "
            "(epoll, poll, select, ...), asyncio, uvloop, threads or gevent"
        )


@dataclass(frozen=True)
class TlsSettings:
    """Everything a TLS server context is built from (files are read by the build)."""

    cert: str
    key: str | None = None
    client_ca: str | None = None
    min_version: str = "1.2"
    sni: tuple[SniEntry, ...] = ()
    alpn: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> TlsSettings | None:
        """The settings, or None when no certificate is given (no TLS listener possible)."""
        if config.tls_cert is None:
            if config.tls_key or config.tls_client_ca or config.tls_sni or config.tls_sni_dir:
                raise TlsError(
                    "--tls-key, --tls-client-ca, --tls-sni and --tls-sni-dir need --tls-cert"
                )
            return None
        # A name given with --tls-sni wins over the same name found in --tls-sni-dir.
        found = read_directory(config.tls_sni_dir) if config.tls_sni_dir else ()
        given = {entry.name for entry in config.tls_sni}
        return cls(
            cert=config.tls_cert,
            key=config.tls_key,
            client_ca=config.tls_client_ca,
            min_version=config.tls_min_version,
            sni=(*(entry for entry in found if entry.name not in given), *config.tls_sni),
            alpn=config.tls_alpn,
        )

    def certificates(self) -> list[tuple[str, str]]:
        """(name, PEM file) of every certificate served: the default one is ``default``."""
        return [("default", self.cert), *((entry.name, entry.cert) for entry in self.sni)]


def build_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context for ``settings``; raises :class:`TlsError` (one line) if unusable."""
    context = _one_context(settings, settings.cert, settings.key)
    if settings.sni:
        by_name = {
            entry.name: _one_context(settings, entry.cert, entry.key) for entry in settings.sni
        }
        context.sni_callback = _sni_callback(by_name)
    return context


def _one_context(settings: TlsSettings, cert: str, key: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.min_version]
    # No renegotiation (TLS 1.2): a client could make the server redo the costly half
    # of a handshake at will, and echo never needs it.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load(context.load_cert_chain, "certificate or key", cert, key)
    if settings.client_ca is not None:
        _load(context.load_verify_locations, "client CA", settings.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    if settings.alpn:
        context.set_alpn_protocols(list(settings.alpn))
    return context


def _load(method: object, what: str, *paths: str | None) -> None:
    files = " + ".join(path for path in paths if path)
    try:
        method(*paths)  # type: ignore[operator]
    except FileNotFoundError:
        raise TlsError(f"TLS {what} {files}: no such file") from None
    except PermissionError:
        raise TlsError(
            f"TLS {what} {files}: permission denied (under systemd, pass the key with "
            "LoadCredential=)"
        ) from None
    except IsADirectoryError:
        raise TlsError(f"TLS {what} {files}: is a directory") from None
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        raise TlsError(f"TLS {what} {files} does not load: {reason}") from None
    except OSError as exc:
        raise TlsError(f"TLS {what} {files}: {exc.strerror or exc}") from None


def _sni_callback(
    by_name: Mapping[str, ssl.SSLContext],
) -> Callable[[ssl.SSLObject, str, ssl.SSLContext], None]:
    def choose(conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        # No name, or one not in the mapping: the default certificate stays.
        if server_name is None:
            return
        name = server_name.lower().rstrip(".")
        chosen = by_name.get(name)
        if chosen is None and "." in name:
            chosen = by_name.get("*." + name.partition(".")[2])
        if chosen is None:
            return
        # gevent hands over a stand-in that holds a weak reference to its SSLSocket.
        owner = getattr(conn, "_sslsock", None)
        (owner() if owner is not None else conn).context = chosen

    return choose


# Handshakes and their failures ----------------------------------------------------------
# OpenSSL reason codes (ssl.SSLError.reason) → the reason counted.
_REASONS = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SHARED_GROUPS": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "CERTIFICATE_VERIFY_FAILED": "bad_certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "bad_certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "bad_certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "bad_certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "bad_certificate",
    "WRONG_VERSION_NUMBER": "unexpected_record",
    "HTTP_REQUEST": "unexpected_record",
    "UNEXPECTED_MESSAGE": "unexpected_record",
    "UNEXPECTED_RECORD": "unexpected_record",
    "RECORD_LAYER_FAILURE": "unexpected_record",
    "PACKET_LENGTH_TOO_LONG": "unexpected_record",
    "LENGTH_MISMATCH": "unexpected_record",
    "BAD_PACKET_LENGTH": "unexpected_record",
    "DECODE_ERROR": "unexpected_record",
    "BAD_EXTENSION": "unexpected_record",
    "LENGTH_TOO_SHORT": "unexpected_record",
    "UNKNOWN_PROTOCOL": "unexpected_record",
}


def failure_reason(exc: BaseException) -> str:
    """Which of :data:`FAILURE_REASONS` a failed handshake counts under."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError) and exc.reason is not None:
        return _REASONS.get(exc.reason, "other")
    return "other"


class TlsEndpoint:
    """What every ``tls:`` listener of a process carries: the current context, swappable.

    ``counters`` is the process's; backends count each handshake and failure in it.
    """

    __slots__ = ("context", "counters", "expiry", "handshake_timeout", "settings")

    def __init__(
        self, settings: TlsSettings, context: ssl.SSLContext, handshake_timeout: float
    ) -> None:
        self.settings = settings
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.counters = TlsCounters()
        # notAfter by certificate name, of the certificates being served.
        self.expiry = expiry_by_name(settings)

    @classmethod
    def from_config(cls, config: Config) -> TlsEndpoint | None:
        """Build from ``config``; None without --tls-cert; :class:`TlsError` if unusable."""
        settings = TlsSettings.from_config(config)
        if settings is None:
            return None
        return cls(settings, build_context(settings), config.tls_handshake_timeout)

    def swap(self, settings: TlsSettings, context: ssl.SSLContext) -> None:
        """Serve new connections with ``context`` (a reload); open ones keep theirs."""
        self.settings = settings
        self.context = context
        self.expiry = expiry_by_name(settings)

    def describe(self) -> str:
        """One line for the start-up log: versions, certificates and their expiry."""
        names = ", ".join(
            f"{name} until {time.strftime('%Y-%m-%d', time.gmtime(when))}"
            for name, when in sorted(self.expiry.items())
        )
        mutual = "; client certificates required" if self.settings.client_ca else ""
        return f"TLS {self.settings.min_version}+, certificates: {names or 'unreadable'}{mutual}"

    def completed(self, conn: ssl.SSLSocket | ssl.SSLObject) -> None:
        """A handshake succeeded: count it (from the thread that owns the counters)."""
        self.counters.handshake(*handshake_of(conn))

    def failed(self, exc: BaseException) -> None:
        self.counters.failed(failure_of(exc))


def handshake_of(conn: ssl.SSLSocket | ssl.SSLObject) -> tuple[str | None, str | None]:
    """(version, cipher) of a finished handshake; logs them and ALPN's choice at debug."""
    cipher = conn.cipher()
    if log.isEnabledFor(logging.DEBUG):
        log.debug("tls: %s %s alpn=%s", conn.version(), cipher, conn.selected_alpn_protocol())
    return conn.version(), cipher[0] if cipher else None


def failure_of(exc: BaseException) -> str:
    """The reason a failed handshake counts under; logged at debug."""
    reason = failure_reason(exc)
    log.debug("tls: handshake failed (%s): %s", reason, exc)
    return reason


def certificate_expiry(path: str) -> float | None:
    """notAfter of the first certificate in ``path`` as a Unix time, or None if unreadable."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        return float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except (OSError, ssl.SSLError, KeyError, ValueError):
        return None


def expiry_by_name(settings: TlsSettings) -> dict[str, float]:
    """``echod_tls_certificate_expiry_timestamp_seconds{name}``: one per served certificate."""
    expiry: dict[str, float] = {}
    for name, path in settings.certificates():
        when = certificate_expiry(path)
        if when is not None:
            expiry[name] = when
    return expiry


assert set(_REASONS.values()) < set(FAILURE_REASONS)

"""The target of a run: its address resolved once, one probe connect before any worker
starts, and :class:`Abort`, the one-line reason a run stops (TCP and ``--udp`` alike)."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from loadtest.params import Params
from loadtest.report import EXIT_BAD_INPUT
from loadtest.tls import TlsSetupError, client_context
from loadtest.tls import probe as tls_probe


class Abort(Exception):
    """A one-line reason to stop, with the exit status that goes with it."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.status = status


def resolve(params: Params, kind: int = socket.SOCK_STREAM) -> tuple[int, tuple[Any, ...]]:
    """The family and address of the target, for TCP or (``SOCK_DGRAM``) ``--udp``."""
    try:
        infos = socket.getaddrinfo(params.host, params.port, type=kind)
    except socket.gaierror as exc:
        raise Abort(f"cannot resolve {params.host}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    return family, address


def preflight(params: Params, family: int, address: tuple[Any, ...]) -> None:
    """One blocking connect, bounded by --connect-timeout, before any worker starts."""
    where = f"{params.host}:{params.port}"
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.settimeout(params.connect_timeout)
    try:
        if params.source_address:  # reachable from where the load comes from
            probe.bind((params.source_address[0], 0))
        probe.connect(address)
        if params.tls:
            context = client_context(
                params.tls_ca, params.insecure, params.tls_min_version, params.tls_max_version
            )
            tls_probe(context, probe, params.tls_sni or params.host).close()
    except TlsSetupError as exc:
        raise Abort(str(exc)) from exc
    except ssl.SSLError as exc:
        raise Abort(f"TLS handshake with {where} failed: {exc.reason or exc}") from exc
    except TimeoutError as exc:
        raise Abort(
            f"cannot connect to {where}: no answer within {params.connect_timeout:g} s"
        ) from exc
    except OSError as exc:
        raise Abort(f"cannot connect to {where}: {exc.strerror or exc}") from exc
    finally:
        probe.close()

"""A client that retries, tested against an echo server that resets every other connection.

With echod installed, its pytest plugin gives ``echo_server_factory``: no conftest.
Run it with ``pytest docs/examples/test_retrying_client.py``.
"""

from __future__ import annotations

import socket

import pytest

from echod.pytest_plugin import EchoServerFactory

Address = tuple[str, int]


def echo_with_retries(address: Address, message: bytes, attempts: int = 3) -> tuple[bytes, int]:
    """Send ``message`` and read its echo; on a reset or an early end, try a new
    connection. Returns the echo and the attempt that got it."""
    for attempt in range(1, attempts + 1):
        try:
            with socket.create_connection(address, timeout=5) as sock:
                sock.sendall(message)
                received = b""
                while len(received) < len(message):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed before the whole echo")
                    received += chunk
                return received, attempt
        except OSError:
            if attempt == attempts:
                raise
    raise ValueError("attempts must be at least 1")


def test_the_client_gets_its_echo_past_a_reset(echo_server_factory: EchoServerFactory) -> None:
    # Connections 1, 3, 5... are reset once 100 bytes have come in; 2, 4... echo.
    server = echo_server_factory(faults=["reset-after:100"], every=2)
    message = b"retry me " * 100
    assert echo_with_retries(server.address, message) == (message, 2)
    assert server.stats().connections_total == 2


def test_without_a_retry_the_reset_reaches_the_caller(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = echo_server_factory(faults=["reset-after:100"], every=2)
    with pytest.raises(OSError):
        echo_with_retries(server.address, b"retry me " * 100, attempts=1)

"""Local source addresses (--source-address): parsing, and a check that each binds.

One source address reaches one server port through at most the ephemeral port
range (~28,000 ports by default); spreading connections over several local
addresses is how one host opens 100,000 of them, as tcpkali's --source-ip.
"""

from __future__ import annotations

import ipaddress
import socket

# Linux only: the kernel picks the port at connect time, per destination, so a bound
# address is not limited to the ports a bind(port 0) could reserve.  Elsewhere the
# port is reserved at bind time.
BIND_ADDRESS_NO_PORT: int | None = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)

# A range longer than this is a typo, not a plan: 65,536 addresses already allow
# billions of connections.
MAX_SOURCES = 65_536

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an IPv4 or IPv6 address") from None


def parse_sources(text: str) -> tuple[str, ...]:
    """``A,B,...`` and ``FIRST-LAST`` items, in order, one family, no repeats.

    Raises ValueError with a sentence for the user.
    """
    found: list[Address] = []
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"empty item in {text!r}")
        if "-" in item:
            first_text, _, last_text = item.partition("-")
            first, last = _address(first_text), _address(last_text)
            if first.version != last.version:
                raise ValueError(f"range {item.strip()} mixes IPv4 and IPv6")
            if int(last) < int(first):
                raise ValueError(f"range {item.strip()} runs backwards")
            if int(last) - int(first) + 1 > MAX_SOURCES:
                raise ValueError(f"range {item.strip()} holds more than {MAX_SOURCES:,} addresses")
            found.extend(ipaddress.ip_address(n) for n in range(int(first), int(last) + 1))
        else:
            found.append(_address(item))
        if len(found) > MAX_SOURCES:
            raise ValueError(f"more than {MAX_SOURCES:,} source addresses")
    if len({a.version for a in found}) > 1:
        raise ValueError("source addresses mix IPv4 and IPv6")
    unique = list(dict.fromkeys(found))
    if len(unique) != len(found):
        repeated = next(a for a in unique if found.count(a) > 1)
        raise ValueError(f"{repeated} is listed twice")
    return tuple(str(a) for a in unique)


def check_sources(sources: tuple[str, ...], family: int) -> str | None:
    """Bind each address once (no port taken) before any worker starts.

    Returns None when all bind, else a sentence naming the first that does not,
    so a typo costs one line instead of every connection failing in the run.
    """
    for source in sources:
        wanted = socket.AF_INET6 if ":" in source else socket.AF_INET
        if wanted != family:
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            return f"source address {source} is not {kind}, as the server address is"
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                if BIND_ADDRESS_NO_PORT is not None:
                    probe.setsockopt(socket.IPPROTO_IP, BIND_ADDRESS_NO_PORT, 1)
                probe.bind((source, 0))
            except OSError as exc:
                return f"cannot bind source address {source}: {exc.strerror or exc}"
    return None

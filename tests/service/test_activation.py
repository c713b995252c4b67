"""Socket activation, sd_listen_fds(3): fds from 3 up, described by LISTEN_* variables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from echod.net.activation import ActivationError, inherited_sockets
from echod.net.addresses import ListenerError
from tests.support import Echod, require_tool, start_on_a_free_port

# Runs in a fresh interpreter so that fds 3, 4, ... are free. Moves the fds
# it was given to 3, 4, ..., sets LISTEN_PID to itself as a service manager
# would, and reports what inherited_sockets() made of them as JSON.
CHILD = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys
    from echod.net.activation import ActivationError, inherited_sockets

    given = [int(fd) for fd in sys.argv[1:]]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
    for fd in given:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    try:
        found = inherited_sockets()
    except ActivationError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
    print(json.dumps({
        "sockets": [
            {
                "name": s.name,
                "fd": s.sock.fileno(),
                "family": s.sock.family.name,
                "type": s.sock.type.name,
                "blocking": s.sock.getblocking(),
                "inheritable": s.sock.get_inheritable(),
                "port": s.sock.getsockname()[1],
            }
            for s in found
        ],
        "environ": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }))
    """
)


def run_child(fds: list[int], environ: dict[str, str]) -> dict[str, object]:
    env = {**os.environ, **environ}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, fds)],
        pass_fds=fds,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


def listener(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.listen()
    return sock


def test_listening_sockets_at_fd_3_and_up_are_taken_with_their_names() -> None:
    families = [socket.AF_INET]
    if socket.has_ipv6:
        try:
            listener(socket.AF_INET6).close()
            families.append(socket.AF_INET6)
        except OSError:
            pass
    socks = [listener(family) for family in families]
    names = ["v4", "v6"][: len(socks)]
    report = run_child(
        [s.fileno() for s in socks],
        {"LISTEN_FDS": str(len(socks)), "LISTEN_FDNAMES": ":".join(names)},
    )
    assert report["sockets"] == [
        {
            "name": name,
            "fd": 3 + i,
            "family": family.name,
            "type": "SOCK_STREAM",
            "blocking": False,
            "inheritable": False,
            "port": sock.getsockname()[1],
        }
        for i, (name, family, sock) in enumerate(zip(names, families, socks, strict=True))
    ]
    # Unset, so that no child of the server mistakes the fds for its own.
    assert report["environ"] == []
    for sock in socks:
        sock.close()


def test_names_default_to_unknown_without_listen_fdnames() -> None:
    with listener() as sock:
        report = run_child([sock.fileno()], {"LISTEN_FDS": "1"})
    assert [s["name"] for s in report["sockets"]] == ["unknown"]  # type: ignore[attr-defined]


def test_with_systemd_socket_activate(tmp_path: Path) -> None:
    tool = require_tool("systemd-socket-activate")
    path = str(tmp_path / "echo.sock")
    out = tmp_path / "report.json"
    script = textwrap.dedent(
        f"""
        import json, os
        from echod.net.activation import inherited_sockets
        found = inherited_sockets()
        json.dump({{
            "sockets": [[s.name, s.sock.family.name, s.sock.getsockname()] for s in found],
            "environ": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        }}, open({str(out)!r}, "w"))
        """
    )
    # The tool binds, then starts the service on the first connection.

    def start(port: int) -> Echod:
        wrapper = [tool, "-l", f"127.0.0.1:{port}", "-l", path, "--fdname=tcp:local"]
        if os.path.exists(path):
            os.unlink(path)  # a try whose TCP port was taken left it behind
        return Echod(wrapper=wrapper, program=("-c", script), wait=False)

    tool_run, port = start_on_a_free_port(start, listeners=2)
    with tool_run:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert time.monotonic() < deadline, "systemd-socket-activate never listened"
                time.sleep(0.05)
        assert tool_run.proc.wait(timeout=30) == 0, tool_run.log
    report = json.loads(out.read_text())
    assert report == {
        "sockets": [["tcp", "AF_INET", ["127.0.0.1", port]], ["local", "AF_UNIX", path]],
        "environ": [],
    }


def test_variables_meant_for_another_process_are_ignored_and_unset() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert inherited_sockets(environ) == []
    assert environ == {}


def test_unset_false_leaves_the_variables() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert inherited_sockets(environ, unset=False) == []
    assert environ == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}


def test_no_listen_pid_means_no_sockets() -> None:
    assert inherited_sockets({"LISTEN_FDS": "1"}) == []


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "me"}, "LISTEN_PID='me' is not a non-negative integer"),
        ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a non-negative integer"),
        ({"LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a non-negative integer"),
        (
            {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "echo"},
            "LISTEN_FDNAMES='echo' has 1 names but LISTEN_FDS=2",
        ),
    ],
)
def test_malformed_variables_raise_one_clear_error(environ: dict[str, str], message: str) -> None:
    environ = {"LISTEN_PID": str(os.getpid()), **environ}
    with pytest.raises(ActivationError) as excinfo:
        inherited_sockets(environ)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ListenerError)  # the CLI: one line, exit 1
    assert environ == {}


def test_a_datagram_socket_is_taken_for_udp_echo() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        report = run_child([sock.fileno()], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "udp-echo"})
    sockets = report["sockets"]
    assert isinstance(sockets, list) and sockets[0]["type"] == "SOCK_DGRAM"
    assert sockets[0]["name"] == "udp-echo"


def test_a_seqpacket_socket_is_refused() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        report = run_child([sock.fileno()], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "echo"})
    assert report == {
        "error": "inherited fd 3 ('echo') is SOCK_SEQPACKET, not SOCK_STREAM or SOCK_DGRAM: "
        "use ListenStream= or ListenDatagram= in the socket unit"
    }


def test_a_stream_socket_that_is_not_listening_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        report = run_child([sock.fileno()], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "echo"})
    assert report == {"error": "inherited fd 3 ('echo') is a stream socket that is not listening"}


def test_a_pipe_is_refused() -> None:
    read_end, write_end = os.pipe()
    try:
        report = run_child([read_end], {"LISTEN_FDS": "1"})
    finally:
        os.close(read_end)
        os.close(write_end)
    assert report == {"error": "inherited fd 3 ('unknown') is not a socket"}


def test_more_fds_announced_than_passed_is_refused() -> None:
    with listener() as sock:
        report = run_child([sock.fileno()], {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"})
    assert report == {"error": "inherited fd 4 ('b') is not open: Bad file descriptor"}


def test_a_socket_named_like_a_proxy_prefix_speaks_the_proxy_protocol() -> None:
    child = CHILD.replace(
        '"port": s.sock.getsockname()[1],',
        '"port": s.sock.getsockname()[1], "proxy": proxy_version(s.sock),',
    ).replace(
        "from echod.net.activation import ActivationError, inherited_sockets",
        "from echod.net.activation import ActivationError, inherited_sockets\n"
        "from echod.net.listeners import proxy_version",
    )
    with listener() as v1, listener() as v2, listener() as plain:
        fds = [v1.fileno(), v2.fileno(), plain.fileno()]
        result = subprocess.run(
            [sys.executable, "-c", child, *map(str, fds)],
            pass_fds=fds,
            env={**os.environ, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "proxy-v1:proxy-v2:echo"},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    report = json.loads(result.stdout)
    assert [(s["name"], s["proxy"]) for s in report["sockets"]] == [
        ("proxy-v1", 1),
        ("proxy-v2", 2),
        ("echo", 0),
    ]
    with listener() as sock:
        assert "proxy-v3" in str(
            run_child([sock.fileno()], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "proxy-v3"})["error"]
        )

"""``python -m bench.conn_memory``: the lines docs/uring.md's memory table comes from."""

from __future__ import annotations

from bench.conn_memory import measure


def test_each_idle_connection_is_charged_to_the_lines_that_hold_it() -> None:
    rows = measure(300, "epoll")
    total, where = rows[0]
    assert where == "total"
    # The connection object and the reactor's callback for it, at least, per connection;
    # the clients' own sockets (this process too) are not echod's and stay out.
    lines = {line.rpartition(":")[0] for _, line in rows[1:]}
    assert {"backends/selector_backends.py", "loop.py"} <= lines, rows
    assert all(not line.startswith("/") for line in lines), rows  # echod's files alone
    assert 150 < total < 4096, rows

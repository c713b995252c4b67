"""A deliberately naive echo server: the suite must fail it, or a case proves nothing.

It makes the mistakes a first echo server makes, each of which one robustness case
exists to catch:

* ``select(2)``: a descriptor at or above FD_SETSIZE (1024) crashes the loop;
* one ``recv``, then one ``send`` whose count is ignored: what does not fit is lost,
  and reading never pauses, so there is no back-pressure;
* a failed ``accept`` is logged and retried at once: out of descriptors, it spins;
* errors from ``recv``/``send`` (a reset peer) are not handled: a traceback ends it;
* on EOF it stops watching the client but keeps its socket "for the reply": a leak;
* no signal handling: SIGTERM kills it mid-transfer;
* ``--workers N`` forks N copies on one listener and never replaces one that dies.

It logs ``listening on 127.0.0.1:PORT`` as echod does, so the same harness drives it,
and ignores echod's other flags.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args, _ = parser.parse_known_args()
    listener = socket.create_server((args.host, args.port), backlog=4096)
    listener.setblocking(False)
    print(f"listening on {args.host}:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
    if args.workers > 1:
        for _ in range(args.workers):
            if os.fork() == 0:
                try:
                    serve(listener)
                finally:
                    os._exit(1)  # a worker that dies must not go on forking as the parent
        print(f"ready: {args.workers} workers", file=sys.stderr, flush=True)
        while True:
            os.wait()  # a worker died: so be it
    serve(listener)


def serve(listener: socket.socket) -> None:
    watched: list[socket.socket] = [listener]
    finished: list[socket.socket] = []  # half-closed clients, kept "for the reply"
    while True:
        readable, _, _ = select.select(watched, [], [])
        for sock in readable:
            if sock is listener:
                try:
                    client, _ = listener.accept()
                except OSError as exc:
                    print(f"accept failed: {exc}", file=sys.stderr, flush=True)
                    continue
                client.setblocking(False)
                watched.append(client)
                continue
            data = sock.recv(65536)
            if not data:
                watched.remove(sock)
                finished.append(sock)
                continue
            with contextlib.suppress(BlockingIOError):
                sock.send(data)  # what does not fit is lost


if __name__ == "__main__":
    main()

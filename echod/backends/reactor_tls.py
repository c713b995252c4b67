"""A TLS connection on the reactor: a non-blocking ``SSLSocket`` driven by readiness.

The session rules are the plain connection's (:class:`~echod.backends.reactor_connection.
Connection`); what TLS changes is how a read or a write can block:

* the handshake runs first, one ``do_handshake()`` per readiness event, registered for
  whichever direction OpenSSL asked for (SSLWantRead / SSLWantWrite), within the
  endpoint's handshake timeout;
* a read may need a write (TLS 1.3 KeyUpdate): the connection then waits for writable
  and reads again from there;
* ``SSL_write`` is all or nothing: it raises SSLWantWrite having perhaps taken some
  records, and must be called again with the same bytes (a longer buffer is allowed).
  ``pending`` always starts with exactly those bytes, since output is only ever
  appended to it, so every retry is ``send(pending)``;
* plaintext already decrypted inside OpenSSL never wakes the selector: after a read the
  connection reads again while ``pending()`` says OpenSSL holds some (ciphertext still
  in the kernel wakes the level-triggered selector again), and whenever reading
  resumes (a drained write, the handshake's end) it reads what OpenSSL holds at once;
* a clean close_notify from the client reads as 0 bytes and ends only the client's
  direction: the echo still owed is sent, then echod's own close_notify, which waits
  for the socket to take it (see :mod:`echod.tls` on TLS 1.2). A TCP FIN without
  close_notify (``SSLEOFError``) is treated as end of input, as on plain TCP.
"""

from __future__ import annotations

import ssl

from echod.backends.reactor_connection import Connection, ConnectionServer
from echod.loop import Call, Handler, Timer
from echod.session import WANT_READ, WANT_WRITE
from echod.tls import TlsEndpoint


class TlsConnection(Connection):
    """An accepted ``SSLSocket``: handshake, then echo through the session's rules."""

    __slots__ = ("endpoint", "goodbye", "handshaken", "read_wants_write", "timer")

    sock: ssl.SSLSocket

    def __init__(
        self, sock: ssl.SSLSocket, server: ConnectionServer, endpoint: TlsEndpoint
    ) -> None:
        super().__init__(sock, server)
        self.endpoint = endpoint
        self.handshaken = False
        self.goodbye = False  # our close_notify was tried
        self.read_wants_write = False
        self.timer: Timer | None = None

    # Handshake -------------------------------------------------------------------------
    def on_handshake(self, mask: int) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._register(WANT_READ, Call(self.on_handshake))
            return
        except ssl.SSLWantWriteError:
            self._register(WANT_WRITE, Call(self.on_handshake))
            return
        except (OSError, ValueError) as exc:  # SSLError, ECONNRESET, ENOTCONN
            self.endpoint.failed(exc)
            self.close()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.handshaken = True
        self.endpoint.completed(self.sock)
        self._register(WANT_READ, self)
        self.on_readable(0)  # the client's first bytes may have come with its Finished

    def handshake_expired(self) -> None:
        self.timer = None
        if not self.handshaken and self.events:
            self.endpoint.failed(TimeoutError())
            self.close()

    def _register(self, wants: int, handler: Handler) -> None:
        if self.events:
            self.server.reactor.change_handler(self.fd, wants, handler)
            self.events = wants

    # Echo ------------------------------------------------------------------------------
    def on_readable(self, mask: int) -> None:
        server = self.server
        sock = self.sock
        buffer = server.buffer
        view = server.view
        stats = server.stats
        while self.events & WANT_READ:
            try:
                received = sock.recv_into(buffer)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self.read_wants_write = True
                self._register(WANT_WRITE, Call(self.on_writable))
                return
            except ssl.SSLEOFError:
                received = -1  # FIN without close_notify: plain end of input
            except OSError:
                self.close()  # a bad record, ECONNRESET: the peer is gone, so is its echo
                return
            if received <= 0:
                self._end_of_input()
                return
            self.idle_ticks = 0
            stats.bytes_in += received
            if self.pending:  # earlier output still waits: keep the order
                self.queue(view[:received])
                self.sync()
            else:
                try:
                    sock.send(view[:received])  # all of it, or SSLWantWrite
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    self.queue(view[:received])
                    self.sync()
                except OSError:
                    self.close()
                    return
                else:
                    stats.bytes_out += received
            # One record per read. More in the kernel makes the selector report the
            # socket again (level-triggered); only plaintext already inside OpenSSL
            # would not, so only that is read now. Reading on until SSLWantRead
            # instead costs an exception per message (see the commit's figures).
            if not sock.pending():
                return

    def on_writable(self, mask: int) -> None:
        if self.read_wants_write:
            self.read_wants_write = False
            self._register(self.wants, self.handler_for(self.wants))
            self.on_readable(mask)
            return
        if not self.pending:
            return
        try:
            sent = self.sock.send(self.pending)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError:
            self.close()
            return
        self.server.stats.bytes_out += sent
        self.sent(sent)
        self.sync()
        if self.events & WANT_READ and self.sock.pending():
            self.on_readable(mask)  # reading resumed over bytes OpenSSL already holds

    def _end_of_input(self) -> None:
        # TLS 1.2 too: what is pending was handed to a blocked SSL_write, which OpenSSL
        # cannot abandon once it has begun writing its records (see echod.tls).
        self.eof()
        self.sync()  # closes once pending is sent, with echod's own close_notify

    # Closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Send our close_notify, then close.

        After the client's end of input the alert waits for the socket to take it (it
        follows the records already written); any other close (an error, the idle
        timeout, a drain's end, a second close while waiting) tries it once.
        """
        if not self.events:
            return
        if self.handshaken and not self.goodbye:
            self.goodbye = True
            if not self._send_close_notify() and self.eof_received:
                self._register(WANT_WRITE, Call(self._on_goodbye_writable))
                return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().close()

    def _send_close_notify(self) -> bool:
        """False while the socket cannot take the alert yet."""
        try:
            # Sends ours without blocking, then fails to read the client's
            # (SSLWantRead) if it has not come: echod does not wait for it.
            self.sock.unwrap()
        except ssl.SSLWantWriteError:
            return False
        except (OSError, ValueError):
            pass  # SSLWantRead, a reset peer: nothing more to send
        return True

    def _on_goodbye_writable(self, mask: int) -> None:
        if self._send_close_notify():
            self.close()


def begin_tls(
    server: ConnectionServer, sock: ssl.SSLSocket, endpoint: TlsEndpoint
) -> TlsConnection:
    """Register a freshly wrapped socket for its handshake, with its timeout."""
    conn = TlsConnection(sock, server, endpoint)
    server.reactor.add(conn.fd, WANT_READ, conn.on_handshake)
    if endpoint.handshake_timeout > 0:
        conn.timer = server.reactor.call_later(endpoint.handshake_timeout, conn.handshake_expired)
    return conn

"""A reactor connection with faults on (``--fault``, :mod:`echod.faults`).

Its own class, chosen at accept (:meth:`ReactorServer.begin
<echod.backends.selector_backends.ReactorServer.begin>`), so a faithful
:class:`~echod.backends.reactor_connection.Connection` has no test for faults in its
path. It is the :class:`~echod.backends.fault_driver.Carrier` of its driver.
"""

from __future__ import annotations

import contextlib
import socket

from echod.backends.fault_driver import FaultDriver, Later, reset_socket
from echod.backends.reactor_connection import Connection, ConnectionServer
from echod.faults import ConnectionFaults
from echod.session import DONE, WANT_READ

# A faulty connection paused by its driver with nothing to send: registered for nothing.
IDLE = -1


class FaultyConnection(Connection):
    """A connection with faults on (``--fault``): every read goes through its
    :class:`~echod.backends.fault_driver.FaultDriver`, which writes the echo back
    through :meth:`write` when it is due, and ends the connection as the fault says."""

    __slots__ = ("driver", "fault_paused", "output_ending")

    def __init__(
        self,
        sock: socket.socket,
        server: ConnectionServer,
        faults: ConnectionFaults,
        later: Later,
    ) -> None:
        super().__init__(sock, server)
        self.driver = FaultDriver(self, faults, later, server.marks)
        self.fault_paused = False
        self.output_ending = False  # close-after: FIN once pending output is sent

    def on_readable(self, mask: int) -> None:
        server = self.server
        try:
            received = self.sock.recv_into(server.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not received:
            self.pause_reading()  # nothing more to read: the driver ends it in turn
            self.driver.end_of_input()
            return
        self.idle_ticks = 0
        server.stats.bytes_in += received
        self.driver.received(bytes(server.view[:received]))

    # The driver's Carrier ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.events:
            return  # closed meanwhile
        if not self.pending:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            self.server.stats.bytes_out += sent
            data = data[sent:]
        if data:
            self.queue(data)
            self.sync()

    def pause_reading(self) -> None:
        self.fault_paused = True
        self._update()
        self.sync()

    def resume_reading(self) -> None:
        self.fault_paused = False
        self._update()
        self.sync()

    def end_input(self) -> None:
        if self.events:
            self.eof()
            self.sync()

    def finish(self) -> None:
        self.output_ending = True
        self.sync()

    def reset(self) -> None:
        reset_socket(self.sock)
        self.close()

    # Its wants, with the driver's pause -------------------------------------------------
    def has_pending(self) -> bool:
        return bool(self.pending) or self.driver.pieces.held > 0

    def _update(self) -> int:
        wants = super()._update()
        if self.fault_paused and wants & WANT_READ:
            wants &= ~WANT_READ
            self.wants = wants
        return wants

    def sync(self) -> None:
        """As :meth:`Connection.sync`, except that wanting nothing before the end of
        input means waiting for the driver (unregistered, ``IDLE``), not closing."""
        if self.output_ending and not self.pending and self.events:
            self.output_ending = False
            with contextlib.suppress(OSError):  # the peer is gone: its close will tell
                self.sock.shutdown(socket.SHUT_WR)
        wants = self.wants
        if wants == self.events or not self.events:
            return
        reactor = self.server.reactor
        if wants == DONE:
            if self.eof_received:
                self.close()
            elif self.events != IDLE:
                reactor.remove(self.fd)
                self.events = IDLE
            return
        handler = self.handler_for(wants)
        if self.events == IDLE:
            reactor.add_handler(self.fd, wants, handler)
        else:
            reactor.change_handler(self.fd, wants, handler)
        self.events = wants

    def close(self) -> None:
        self.driver.cancel()
        if self.events == IDLE:  # registered again, for forget() to remove
            self.server.reactor.add_handler(self.fd, WANT_READ, self)
            self.events = WANT_READ
        super().close()

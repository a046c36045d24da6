"""uvicorn's HTTP protocol with the two timeouts it lacks: a slow request, an idle new connection.

uvicorn (0.30-0.x) closes a keep-alive connection that stays idle between
requests, but has no read timeout: a client that sends its headers or body a
byte a second holds its connection (and the request's memory) for as long as
it trickles, and a connection that never sends a byte is held forever. This
protocol, given to uvicorn as ``Config(http=ReadTimeoutProtocol)``:

- closes a new connection that sends nothing within ``timeout_keep_alive``,
  as uvicorn already does between requests;
- answers 408 and closes when a request (headers and body) has not arrived
  whole within ``read_timeout`` seconds of its first byte.

It also writes each response in one piece: uvicorn writes a response's
headers and its body with two ``transport.write`` calls, two sends on the
socket; on loopback each send is the TCP stack's whole trip, so at one
client they were a quarter of the server's CPU per request (py-spy). The
writes made in one turn of the event loop now go out together at its end.

The timeout is read from the uvicorn ``Config`` object's ``read_timeout``
attribute, set by `export.serve` (an attribute, not a subclass per value, so
that ``--workers`` can pickle the config into its processes).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ReadTimeoutProtocol"]


class _OneWritePerTurn:
    """A transport whose writes in one turn of the event loop go out as one ``write``, at the end of the turn."""

    def __init__(self, transport, loop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name):  # everything else is the transport's
        return getattr(self._transport, name)


class ReadTimeoutProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a deadline per request and for a new connection's first byte."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.read_timeout = float(config.read_timeout)
        self._read_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(_OneWritePerTurn(transport, self.loop))
        # uvicorn's own idle timer, which it arms only after a response;
        # its data_received cancels it at the first byte.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def on_message_complete(self) -> None:
        self._cancel_read_deadline()
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps({"error": f"request not received within {self.read_timeout:g} s"}).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
        self.transport.close()

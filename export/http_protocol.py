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

And it answers the requests the app names as *direct* without ASGI: when
the app's ``state.direct_route(method, path, headers)`` returns a
`DirectRequest`, the protocol hands it the body once it is whole and writes
its answer itself. uvicorn's ASGI cycle (a scope, receive and send
messages, Starlette's request, routing, middleware and response objects) was
most of what the server spent on a small inference request besides the
model; everything else (the parser, keep-alive, pipelining, the timeouts,
graceful shutdown, which waits for the protocol's tasks) stays uvicorn's.
A request takes the direct path only when it is simple: a ``Content-Length``
of at most 64 KiB (uvicorn's read buffer, so reading never pauses), no
``Expect: 100-continue``, no percent-escapes in its path, no access log, no
concurrency limit. Any other goes through ASGI, to the same app.

The timeout is read from the uvicorn ``Config`` object's ``read_timeout``
attribute, set by `export.serve` (an attribute, not a subclass per value, so
that ``--workers`` can pickle the config into its processes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["DirectRequest", "ReadTimeoutProtocol"]


class DirectRequest(Protocol):
    """A request the app answers without ASGI, from its headers on (``state.direct_route`` returns it)."""

    async def answer(self, body: bytes) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes]:
        """``(status, headers, content)`` for the whole body; raises nothing."""

    def abandon(self) -> None:
        """The request will not be answered: its connection went before its body came whole."""


class _DirectCycle:
    """As much of uvicorn's ``RequestResponseCycle`` as `HttpToolsProtocol` reads, for a `DirectRequest`."""

    def __init__(self, request: DirectRequest, keep_alive: bool) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.started = False  # its answer has begun (it may wait behind a pipelined request)
        self.message_event = self  # the protocol sets it on body and disconnect: nothing waits on it here

    def set(self) -> None:
        pass


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
        app = self.app
        while not hasattr(app, "state") and hasattr(app, "app"):  # under uvicorn's middleware, if any
            app = app.app
        route = getattr(getattr(app, "state", None), "direct_route", None)
        simple = not self.access_log and self.limit_concurrency is None and not self.root_path
        self._direct_route = route if simple else None

    def connection_made(self, transport) -> None:
        super().connection_made(_OneWritePerTurn(transport, self.loop))
        # uvicorn's own idle timer, which it arms only after a response;
        # its data_received cancels it at the first byte.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def on_headers_complete(self) -> None:
        request = self._direct_request()
        if request is None:
            super().on_headers_complete()
            return
        cycle = _DirectCycle(request, self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive())
        previous, self.cycle = self.cycle, cycle
        if previous is None or previous.response_complete:
            cycle.started = True
        else:  # pipelined: answered after the one before, as uvicorn does
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))

    def _direct_request(self) -> DirectRequest | None:
        """The app's `DirectRequest` for the request whose headers just came, when it is one it takes."""
        if self._direct_route is None or self.expect_100_continue or self.parser.should_upgrade():
            return None
        length = next((value for name, value in self.headers if name == b"content-length"), None)
        if length is None or not length.isdigit() or int(length) > HIGH_WATER_LIMIT:
            return None
        path = self.url.split(b"?", 1)[0]
        if b"%" in path:
            return None
        return self._direct_route(self.parser.get_method(), path, self.headers)

    def on_message_complete(self) -> None:
        self._cancel_read_deadline()
        super().on_message_complete()
        cycle = self.cycle
        if type(cycle) is _DirectCycle and cycle.started and not cycle.response_complete:
            self._answer(cycle)

    def _start_asgi_task(self, cycle, app) -> None:
        if type(cycle) is not _DirectCycle:
            super()._start_asgi_task(cycle, app)
            return
        cycle.started = True  # its turn after a pipelined request
        if not cycle.more_body:
            self._answer(cycle)

    def _answer(self, cycle: _DirectCycle) -> None:
        # In the server's tasks, which a graceful shutdown waits for.
        task = self.loop.create_task(self._write_answer(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _write_answer(self, cycle: _DirectCycle) -> None:
        try:
            status, headers, content = await cycle.request.answer(bytes(cycle.body))
        except Exception as error:  # a bug: as uvicorn does for an app's, log it and close
            self.logger.error("Exception answering a direct request", exc_info=error)
            cycle.response_complete = True
            self.transport.close()
            return
        cycle.response_started = cycle.response_complete = True
        if cycle.disconnected:
            return
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % len(content))
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", content)
        self.transport.write(b"".join(head))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_read_deadline()
        cycle = self.cycle
        if type(cycle) is _DirectCycle and cycle.started and cycle.more_body:
            cycle.request.abandon()
        for queued, _ in self.pipeline:  # those not started, whole or not
            if type(queued) is _DirectCycle and not queued.started:
                queued.request.abandon()
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

"""A lean HTTP/1.1 server: httptools parses; a request with nothing ahead of it on its connection is handled in
the callback that read it (a :class:`Later` response written from whichever callback resolves it), and a
task answers in order only what has to wait (pipelined requests, a handler that is a coroutine, a client that
reads slowly).

Why not uvicorn: ASGI's per-request machinery (a scope dict, receive/send
coroutines, proxy-header middleware, headers and body written as two TCP segments)
cost 52 µs of server CPU per small request at 5,000 requests/s against 35 µs for
this server, and a closed loop got 36,000 requests/s through it against 59,000
(``benchmarks/frontend.py``, 2-core VM). On a small box the front end's CPU is what
decides where a server stops meeting latency SLOs. The handlers here take a whole
request and return a whole response; nothing in v2 streams.

What it does, as a user of any HTTP/1.1 server expects: keep-alive (HTTP/1.0 too
when asked), pipelining (answers in request order; reading pauses while
``MAX_PIPELINED`` requests wait), chunked request bodies, ``Expect:
100-continue``, bodies over the limit refused with 413 (without buffering them),
malformed requests answered 400 and the connection closed, request heads over
``MAX_HEAD_BYTES`` answered 431, idle keep-alive connections closed after
``keepalive_s``, and a graceful stop: stop accepting, answer what was received,
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httptools

from sloserve.protocol.http_codec import encode_error

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""Request line plus headers; a longer head is answered 431 and the connection closed."""
MAX_PIPELINED = 32
"""Requests received on one connection and not yet answered before reading pauses."""
_STOP_QUIET_S = 0.1
_STOP_NEW_S = 1.0
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    """Percent-encoded path, without the query string."""
    headers: list[tuple[bytes, bytes]]
    """Header names lower-cased, in the order received."""
    body: bytes
    received_s: float | None = None
    """When its first bytes were read (the server's clock)."""

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()
    """More headers; content-type, content-length and connection are the server's."""


class Cancellable(Protocol):
    """Work that makes a :class:`Later` response (the data plane's queued query)."""

    def cancel(self) -> None:
        """Nobody wants its result any more: drop what is not done yet."""
        ...


class Later:
    """A response a handler hands over when it has it, possibly from another callback of the event loop (the
    data plane's batcher, for an inference): the connection writes it from there and spares waking its task for
    it (~2.5 µs a request) and the turn the task would wait for. Awaitable, for callers that just want the
    response. If its client goes away first, the connection cancels it (:meth:`cancel`), and its ``work``."""

    __slots__ = ("_then", "response", "work")

    def __init__(self, response: HttpResponse | None = None) -> None:
        self.response = response
        """The response once there is one."""
        self._then: Callable[[HttpResponse], object] | None = None
        self.work: Cancellable | None = None
        """What makes the response, if it can be dropped: a query waiting in a batcher's queue is then not
        computed (a client that disconnects while it waits, e.g. on its own timeout, costs nothing more)."""

    def cancel(self) -> None:
        """Its client went away before the response: the response is not wanted, nor its ``work`` done."""
        self._then = None
        work, self.work = self.work, None
        if work is not None and self.response is None:
            work.cancel()

    def resolve(self, response: HttpResponse) -> None:
        if self.response is not None:
            return
        self.response = response
        self.work = None  # done: and no cycle left (the work holds its answer's callback, which holds this)
        then, self._then = self._then, None
        if then is not None:
            then(response)

    def then(self, callback: Callable[[HttpResponse], object]) -> None:
        """Call ``callback`` with the response once there is one (now, if there is)."""
        if self.response is not None:
            callback(self.response)
        else:
            self._then = callback

    def __await__(self) -> Generator[Any, None, HttpResponse]:
        if self.response is None:
            future: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
            self._then = functools.partial(_settle, future)
            return (yield from future)
        return self.response


def _settle(future: asyncio.Future[HttpResponse], response: HttpResponse) -> None:
    if not future.done():  # its awaiter may have been cancelled
        future.set_result(response)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""A request's response: a :class:`Later` is written when it resolves, from whichever callback resolves it."""


def error_response(status: int, message: str) -> HttpResponse:
    """A response in the v2 error shape, ``{"error": message}``."""
    return HttpResponse(status, encode_error(message))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets that say so, and
    # with Nagle on, a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass(slots=True)
class _Received:
    """A complete request, or the answer already decided for it (413, 400, 431)."""

    request: HttpRequest | None
    answer: HttpResponse | None
    keep_alive: bool
    http10: bool


class HttpServer:
    """Serve ``handler`` on ``sock``. ``max_body_bytes`` bounds a request body (413 past it)."""

    def __init__(
        self,
        handler: Handler,
        sock: socket.socket,
        *,
        max_body_bytes: int,
        grace_s: float,
        keepalive_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self.clock = clock
        """Stamps each request's ``received_s``."""
        self._sock = sock
        self.max_body_bytes = max_body_bytes
        self._grace_s = grace_s
        self.keepalive_s = keepalive_s
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._all_closed: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.stopping = False

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._server = await loop.create_server(lambda: _Connection(self, self._handler), sock=self._sock)
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="http-keepalive")

    async def stop(self) -> None:
        """Stop accepting, answer every request already received (up to the grace period), close."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        assert self._all_closed is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._grace_s):
                while self._connections:
                    # Busy connections close after their answer. An idle one is closed once it has been quiet
                    # a moment (a request may be in the socket, unread), and a new one that has sent nothing
                    # gets a second to send its request (Go's http.Server.Shutdown does the same).
                    now = loop.time()
                    for connection in list(self._connections):
                        quiet = now - connection.last_active >= _STOP_QUIET_S
                        if quiet and (connection.served or now - connection.opened_at >= _STOP_NEW_S):
                            connection.close_when_idle()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_STOP_QUIET_S / 2):
                            await self._all_closed.wait()
        except TimeoutError:
            log.warning(
                "%d HTTP connection(s) still busy after %.1f s; closing them", len(self._connections), self._grace_s
            )
            for connection in list(self._connections):
                connection.abort()
        self._server = None

    def opened(self, connection: _Connection) -> None:
        self._connections.add(connection)
        assert self._all_closed is not None
        self._all_closed.clear()

    def closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle for ``keepalive_s`` (checked a few times per period)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self.keepalive_s / 4, 0.01))
            cutoff = loop.time() - self.keepalive_s
            for connection in list(self._connections):
                if connection.last_active < cutoff:
                    connection.expire()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer, handler: Handler) -> None:
        self._server = server
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._received: deque[_Received] = deque()
        self._task: asyncio.Task[None] | None = None
        self._later: _Received | None = None
        """The request whose :class:`Later` response is awaited (those behind it wait for it to be written) ..."""
        self._awaited_later: Later | None = None
        """... and that response, cancelled if the client goes away first."""
        self._reading = True
        self._closing = False
        self._writable: asyncio.Future[None] | None = None
        self.last_active = self._loop.time()
        """When bytes last arrived or an answer left (for the keep-alive timeout)."""
        self.opened_at = self.last_active
        self.served = False
        """Whether any request has arrived on it."""
        self._in_message = False
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._refused: HttpResponse | None = None
        self._received_s = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._received.clear()
        self._drop_later()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._server.closed(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._closing:  # answered with an error and closing: what follows is not read
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as error:
            if self._head_bytes > MAX_HEAD_BYTES:  # raised by on_url or on_header, inside the parser
                self._fail(431, f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
            else:
                self._fail(400, f"malformed HTTP request: {error}")

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self.served = True
        self._received_s = self._server.clock()
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._refused = None

    # The head's size is counted in the callbacks themselves, not in a method they share: they run for every
    # header of every request, and a call is a third of what one costs.

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("request head too large")  # the parser raises it as its error: a 431 (data_received)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("request head too large")

    def on_headers_complete(self) -> None:
        limit = self._server.max_body_bytes
        expect_continue = False
        for name, value in self._headers:
            if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                self._refused = error_response(413, f"request body of {int(value)} bytes is over the limit of {limit}")
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if expect_continue and self._transport is not None:
            if self._refused is not None:  # the client waits before sending the body: refuse it now
                self._fail(413, f"request body is over the limit of {limit} bytes")
            elif self._idle:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refused is not None:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body_bytes:
            self._refused = error_response(
                413, f"request body is over the limit of {self._server.max_body_bytes} bytes"
            )
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._closing:
            return
        request = None
        if self._refused is None:
            url = httptools.parse_url(self._url) if self._url[:1] != b"/" else None
            path = (url.path if url is not None else self._url.split(b"?", 1)[0]).decode("latin-1")
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            request = HttpRequest(
                self._parser.get_method().decode("ascii"), path, self._headers, body, self._received_s
            )
        self._body = []
        self._enqueue(
            _Received(
                request, self._refused, self._parser.should_keep_alive(), self._parser.get_http_version() == "1.0"
            )
        )

    # -- answering -------------------------------------------------------------------------------

    @property
    def _idle(self) -> bool:
        """Nothing received is waiting for its answer."""
        return self._task is None and self._later is None and not self._received

    def _enqueue(self, received: _Received) -> None:
        if self._task is None and self._later is None and not self._received and self._writable is None:
            self._answer_now(received)
            return
        self._received.append(received)
        if len(self._received) >= MAX_PIPELINED and self._reading and self._transport is not None:
            self._transport.pause_reading()
            self._reading = False
        if self._task is None and self._later is None:
            self._task = self._loop.create_task(self._answer_all())

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer it after those before it, then close."""
        if self._transport is not None and self._reading:
            self._transport.pause_reading()
            self._reading = False
        self._enqueue(_Received(None, error_response(status, message), keep_alive=False, http10=False))
        self._closing = True

    def _answer_now(self, received: _Received) -> None:
        """Handle a request with nothing ahead of it on its connection from the callback that read it: its
        response written now, or handed over later, or awaited in a task only when the handler needs one.

        A task per request (what every request took before) cost a task's creation and first step, and the
        handler ran only after every connection read in the same poll had been parsed: with many connections
        each request then waited for the others' reading before it was decoded, admitted and queued."""
        started = self._start(received)
        if started is None:  # handed over later
            return
        if isinstance(started, HttpResponse):
            if self._answer(started, received) and self._server.stopping:
                self.close_when_idle()
            self.last_active = self._loop.time()
            return
        self._task = self._loop.create_task(self._answer_all((received, started)))

    def _start(self, received: _Received) -> HttpResponse | Awaitable[HttpResponse] | None:
        """Call the handler for ``received``: its response if there is one now, None if it will be handed over
        (:meth:`_write_later` writes it), else what to await for it."""
        if received.answer is not None:
            return received.answer
        assert received.request is not None
        outcome = self._call(received.request)
        if isinstance(outcome, Later):
            if outcome.response is None:
                self._later, self._awaited_later = received, outcome
                outcome.then(self._write_later)
            return outcome.response
        return outcome

    async def _answer_all(self, first: tuple[_Received, Awaitable[HttpResponse]] | None = None) -> None:
        """Answer what was received, in order, while the client keeps reading (``first``: a request whose
        handler was called already, and what to await for its response); stop at a response handed over later
        (:meth:`_write_later` carries on)."""
        try:
            if first is not None:
                received, outcome = first
                assert received.request is not None
                if not self._answer(await self._awaited(outcome, received.request), received):
                    return
            while True:
                if self._writable is not None:  # the client reads slower than we answer
                    await self._writable
                if not self._reading and not self._closing and self._transport is not None:
                    self._transport.resume_reading()
                    self._reading = True
                if not self._received:
                    return
                received = self._received.popleft()
                started = self._start(received)
                if started is None:
                    return
                if not isinstance(started, HttpResponse):
                    assert received.request is not None
                    started = await self._awaited(started, received.request)
                if not self._answer(started, received):
                    return
        finally:
            self._task = None
            self.last_active = self._loop.time()
            if self._server.stopping:
                self.close_when_idle()

    def _call(self, request: HttpRequest) -> Awaitable[HttpResponse]:
        try:
            return self._handler(request)
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return Later(error_response(500, "internal server error; see the server log"))

    async def _awaited(self, outcome: Awaitable[HttpResponse], request: HttpRequest) -> HttpResponse:
        try:
            return await outcome
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return error_response(500, "internal server error; see the server log")

    def _write_later(self, response: HttpResponse) -> None:
        """Write a :class:`Later` response from the callback that resolved it; answer what came in behind it."""
        received, self._later, self._awaited_later = self._later, None, None
        if received is None:  # aborted meanwhile
            return
        self.last_active = self._loop.time()
        if self._answer(response, received) and (self._received or not self._reading or self._writable is not None):
            self._task = self._loop.create_task(self._answer_all())
        elif self._server.stopping:
            self.close_when_idle()

    def _answer(self, response: HttpResponse, received: _Received) -> bool:
        """Write ``response``; whether the connection stays open."""
        keep_alive = received.keep_alive and not self._server.stopping
        self._write(response, received, keep_alive)
        if not keep_alive:
            self._close()
        return keep_alive

    def _write(self, response: HttpResponse, received: _Received, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = response.body
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
            response.status,
            _REASONS.get(response.status, b"Unknown"),
            response.content_type,
            len(body),
        )
        for name, value in response.headers:
            head += name + b": " + value + b"\r\n"
        if not keep_alive:
            head += b"connection: close\r\n"
        elif received.http10:
            head += b"connection: keep-alive\r\n"
        head += b"\r\n"
        if received.request is not None and received.request.method == "HEAD":
            transport.write(head)
        elif len(body) < 65536:
            transport.write(head + body)  # one segment: headers and body in one send
        else:
            transport.writelines((head, body))

    # -- closing ---------------------------------------------------------------------------------

    def close_when_idle(self) -> None:
        """Close if nothing is being received or answered (else the answer closes it, when stopping)."""
        if self._idle and not self._in_message:
            self._close()

    def expire(self) -> None:
        """Close for inactivity unless answering (a request half-sent for ``keepalive_s`` is dropped)."""
        if self._idle:
            self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _drop_later(self) -> None:
        """The client is gone: the response it awaits is not wanted (nor computed, if it can still be spared)."""
        later, self._later, self._awaited_later = self._awaited_later, None, None
        if later is not None:
            later.cancel()

    def abort(self) -> None:
        self._drop_later()
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()
        self._server.closed(self)

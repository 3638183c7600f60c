"""The HTTP/1.1 server on a real socket: keep-alive, pipelining, bodies, limits, bad input, stop."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import AsyncIterator, Awaitable

import httpx
import orjson
import pytest

from sloserve.server.http.serve import MAX_HEAD_BYTES, HttpRequest, HttpResponse, HttpServer, Later, bind

pytestmark = pytest.mark.integration

LIMIT = 1024


class Echo:
    """Answers with what it got; ``/slow`` waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.started = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.started += 1
        self.entered.set()
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/boom":
            raise RuntimeError("a bug")
        body = orjson.dumps({"method": request.method, "path": request.path, "body": request.body.decode()})
        return HttpResponse(200, body, headers=((b"x-seen", str(self.started).encode()),))


@pytest.fixture
async def echo() -> AsyncIterator[tuple[HttpServer, Echo]]:
    handler = Echo()
    server = HttpServer(handler, bind("127.0.0.1", 0), max_body_bytes=LIMIT, grace_s=2.0, keepalive_s=0.4)
    await server.start()
    yield server, handler
    handler.release.set()
    await server.stop()


async def exchange(port: int, raw: bytes, until_closed: bool = False) -> bytes:
    """Send raw bytes; read until the peer closes (or briefly, if it keeps the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 5.0 if until_closed else 0.3)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in a byte stream."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b": ") for line in lines[1:]) if k == b"content-length")
        out.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return out


async def test_keep_alive_and_a_real_client(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        for i in range(3):
            response = await client.post("/v2/x?y=1", content=f"body {i}".encode())
            assert response.status_code == 200
            assert response.json() == {"method": "POST", "path": "/v2/x", "body": f"body {i}"}
            assert response.headers["content-type"] == "application/json"
        assert len(server._connections) == 1  # one connection, reused


async def test_pipelined_requests_are_answered_in_order(echo: tuple[HttpServer, Echo]) -> None:
    server, handler = echo
    raw = b"".join(f"POST /slow{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{i}".encode() for i in range(5))
    handler.release.set()
    got = responses(await exchange(server.port, raw))
    assert [orjson.loads(body)["body"] for _, body in got] == ["0", "1", "2", "3", "4"]


async def test_chunked_body_and_expect_continue(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert orjson.loads(responses(await exchange(server.port, chunked))[0][1])["body"] == "abcde"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode() + b"x" * (LIMIT + 1),
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100\r\n" + b"x" * 256 + b"\r\n") * 5
        + b"0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_bodies_over_the_limit_are_413_and_the_connection_goes_on(
    echo: tuple[HttpServer, Echo], raw: bytes
) -> None:
    server, handler = echo
    got = responses(await exchange(server.port, raw + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert got[0][0] == 413 and "limit" in orjson.loads(got[0][1])["error"]
    assert got[1][0] == 200 and orjson.loads(got[1][1])["path"] == "/after"
    assert handler.started == 1  # the big one never reached the handler


async def test_expect_continue_over_the_limit_is_refused_before_the_body(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    raw = f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT * 10}\r\nExpect: 100-continue\r\n\r\n".encode()
    got = await exchange(server.port, raw, until_closed=True)
    assert responses(got)[0][0] == 413
    assert b"connection: close" in got


async def test_malformed_requests_get_400_then_close_and_the_server_keeps_serving(
    echo: tuple[HttpServer, Echo],
) -> None:
    server, _ = echo
    for junk in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: -3\r\n\r\n", b"\x16\x03\x01\x02\x00"):
        got = await exchange(server.port, junk, until_closed=True)
        status, body = responses(got)[0]
        assert status == 400 and "malformed" in orjson.loads(body)["error"]
    huge = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"
    assert responses(await exchange(server.port, huge, until_closed=True))[0][0] == 431
    long_url = b"GET /" + b"a" * (MAX_HEAD_BYTES + 1) + b" HTTP/1.1\r\n\r\n"
    assert responses(await exchange(server.port, long_url, until_closed=True))[0][0] == 431
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/fine")).status_code == 200


async def test_a_handler_bug_is_a_500_and_the_connection_survives(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    raw = b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
    got = responses(await exchange(server.port, raw))
    assert [status for status, _ in got] == [500, 200]
    assert "server log" in orjson.loads(got[0][1])["error"]


async def test_http10_closes_unless_asked_to_keep_alive_and_head_has_no_body(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    closed = await exchange(server.port, b"GET /a HTTP/1.0\r\n\r\n", until_closed=True)
    assert closed.startswith(b"HTTP/1.1 200") and b"connection: close" in closed
    kept = await exchange(server.port, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"connection: keep-alive" in kept
    close_asked = await exchange(server.port, b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", until_closed=True)
    assert b"connection: close" in close_asked
    head = await exchange(server.port, b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.endswith(b"\r\n\r\n") and b"content-length: " in head


async def test_idle_and_half_sent_connections_are_closed(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    # keepalive_s is 0.4 s here: the server closes the idle connection by itself
    rest = await asyncio.wait_for(reader.read(), 5.0)
    assert b"path" in rest  # the body of the one response, then EOF
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Slow")  # and never the rest
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    assert not server._connections


async def test_stop_answers_requests_in_flight_then_refuses_connections(echo: tuple[HttpServer, Echo]) -> None:
    server, handler = echo
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(handler.entered.wait(), 5.0)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waiting for the request in flight
    handler.release.set()
    answer = await asyncio.wait_for(reader.read(), 5.0)  # answered, then closed
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer
    await asyncio.wait_for(stopping, 5.0)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_blocking_stdlib_client_in_a_thread(echo: tuple[HttpServer, Echo]) -> None:
    """http.client writes headers and body separately: the parser must join them."""
    server, _ = echo

    def call() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("POST", "/s", body=b"x" * 600)
        response = connection.getresponse()
        out = (response.status, response.read())
        connection.close()
        return out

    status, body = await asyncio.to_thread(call)
    assert status == 200 and orjson.loads(body)["body"] == "x" * 600


async def test_stop_gives_a_connection_just_opened_time_to_send_its_request(echo: tuple[HttpServer, Echo]) -> None:
    server, _ = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.sleep(0.05)  # accepted, nothing sent yet
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.3)
    writer.write(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5.0)
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer
    await asyncio.wait_for(stopping, 5.0)


async def test_a_request_is_stamped_when_its_first_bytes_arrive() -> None:
    """Latency SLOs count from ``received_s``: a body that trickles in, or a request waiting behind others
    on its connection, has spent that time already."""
    import time

    seen: list[tuple[float | None, float]] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append((request.received_s, time.monotonic()))
        return HttpResponse(200, b"{}")

    server = HttpServer(handler, bind("127.0.0.1", 0), max_body_bytes=LIMIT, grace_s=1.0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        sent = time.monotonic()
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"cd")
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
    finally:
        await server.stop()
    [(received, handled)] = seen
    assert received is not None and sent <= received < sent + 0.05
    assert handled - received >= 0.09


class Deferring:
    """Hands its responses over later (:class:`Later`), as the app does an inference's from the batcher's turn:
    the test resolves them, from outside any task of the connection."""

    def __init__(self) -> None:
        self.pending: list[tuple[HttpRequest, Later]] = []
        self.called = asyncio.Event()
        self.cancelled = 0
        self.tasks: list[asyncio.Task[object] | None] = []
        """The task each call ran in (None: a callback of the loop, such as the connection's read)."""

    def __call__(self, request: HttpRequest) -> Awaitable[HttpResponse]:
        self.called.set()
        self.tasks.append(asyncio.current_task())
        if request.path == "/now":
            return Later(HttpResponse(200, b'"now"'))
        later = Later()
        later.work = self
        self.pending.append((request, later))
        return later

    def cancel(self) -> None:  # the work behind a pending response
        self.cancelled += 1

    def resolve_next(self) -> None:
        request, later = self.pending.pop(0)
        asyncio.get_running_loop().call_soon(later.resolve, HttpResponse(200, orjson.dumps(request.path)))


@pytest.fixture
async def deferring() -> AsyncIterator[tuple[HttpServer, Deferring]]:
    handler = Deferring()
    server = HttpServer(handler, bind("127.0.0.1", 0), max_body_bytes=LIMIT, grace_s=2.0)
    await server.start()
    yield server, handler
    await server.stop()


async def test_a_response_handed_over_later_is_written_then_and_keeps_pipelined_answers_in_order(
    deferring: tuple[HttpServer, Deferring],
) -> None:
    server, handler = deferring
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    get = "GET {} HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write("".join(get.format(p) for p in ("/first", "/now", "/third")).encode())
    await asyncio.wait_for(handler.called.wait(), 5.0)
    await asyncio.sleep(0.1)
    assert [r.path for r, _ in handler.pending] == ["/first"]  # the others wait their turn, not handled yet
    handler.resolve_next()
    first = await asyncio.wait_for(reader.readuntil(b'"/first"'), 5.0)
    assert first.startswith(b"HTTP/1.1 200")
    second = await asyncio.wait_for(reader.readuntil(b'"now"'), 5.0)  # answered at once, after the first
    assert second.startswith(b"HTTP/1.1 200")
    for _ in range(50):  # the third is handed over later in its turn
        if handler.pending:
            break
        await asyncio.sleep(0.01)
    handler.resolve_next()
    third = await asyncio.wait_for(reader.readuntil(b'"/third"'), 5.0)
    assert third.startswith(b"HTTP/1.1 200")
    writer.write(get.format("/fourth").encode())  # the connection goes on
    for _ in range(50):
        if handler.pending:
            break
        await asyncio.sleep(0.01)
    handler.resolve_next()
    assert (await asyncio.wait_for(reader.readuntil(b'"/fourth"'), 5.0)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_stop_waits_for_a_response_handed_over_later(deferring: tuple[HttpServer, Deferring]) -> None:
    server, handler = deferring
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /pending HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(handler.called.wait(), 5.0)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.3)
    assert not stopping.done() and len(server._connections) == 1  # not closed under its request
    handler.resolve_next()
    answer = await asyncio.wait_for(reader.read(), 5.0)  # answered, then closed
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer and answer.endswith(b'"/pending"')
    await asyncio.wait_for(stopping, 5.0)


async def test_a_later_response_is_awaitable_too() -> None:
    later = Later()
    asyncio.get_running_loop().call_soon(later.resolve, HttpResponse(204))
    assert (await later).status == 204
    assert (await Later(HttpResponse(200))).status == 200


async def test_a_client_gone_before_its_later_response_cancels_the_work_behind_it(
    deferring: tuple[HttpServer, Deferring],
) -> None:
    server, handler = deferring
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /answered HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(handler.called.wait(), 5.0)
    handler.resolve_next()
    assert (await asyncio.wait_for(reader.readuntil(b'"/answered"'), 5.0)).startswith(b"HTTP/1.1 200")
    handler.called.clear()
    writer.write(b"GET /abandoned HTTP/1.1\r\nHost: x\r\n\r\nGET /behind HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(handler.called.wait(), 5.0)
    assert handler.cancelled == 0  # an answered response's work is not cancelled
    writer.close()  # the client gives up while its response is still being made
    for _ in range(100):
        if handler.cancelled or not server._connections:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert handler.cancelled == 1 and not server._connections
    assert [r.path for r, _ in handler.pending] == ["/abandoned"]  # the pipelined one behind it never handled
    _, later = handler.pending.pop()
    later.resolve(HttpResponse(200, b"late"))  # finishing anyway writes nothing and raises nothing
    later.cancel()  # nor does cancelling it again
    assert handler.cancelled == 1


async def test_a_request_with_nothing_ahead_is_handled_in_the_read_that_completed_it_not_in_a_task(
    deferring: tuple[HttpServer, Deferring], echo: tuple[HttpServer, Echo]
) -> None:
    server, handler = deferring
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b'"now"'), 5.0)).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if handler.pending:
            break
        await asyncio.sleep(0.01)
    handler.resolve_next()
    await asyncio.wait_for(reader.readuntil(b'"/first"'), 5.0)
    await asyncio.wait_for(reader.readuntil(b'"now"'), 5.0)
    assert handler.tasks[:2] == [None, None]  # each read on an idle connection: no task made for it
    assert len(handler.tasks) == 3 and handler.tasks[2] is not None  # pipelined behind a pending one: a task
    writer.close()
    echo_server, _ = echo  # a handler that is a coroutine is awaited in a task, its answer as before
    data = await exchange(echo_server.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [orjson.loads(body)["path"] for _, body in responses(data)] == ["/a", "/b"]

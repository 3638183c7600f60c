"""Run an ASGI app on uvicorn inside an existing event loop, with our own shutdown."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import uvicorn

from sloserve.server.http.app import Receive, Scope, Send

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only turns Nagle off (TCP_NODELAY) on sockets that say so, and
    # with Nagle on, a response written as headers + body waits ~40 ms for the client's delayed ACK.
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


class UvicornServer:
    """uvicorn without its signal handling: the composition root owns signals."""

    def __init__(self, app: AsgiApp, sock: socket.socket, grace_s: float) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            http="httptools",
            loop="none",
            timeout_graceful_shutdown=max(1, int(grace_s)),
            server_header=False,
            backlog=2048,
        )
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._main: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        self._server.config.load()
        self._server.lifespan = self._server.config.lifespan_class(self._server.config)
        await self._server.startup(sockets=[self._sock])
        self._main = asyncio.create_task(self._server.main_loop(), name="uvicorn")

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (up to the grace period), close."""
        self._server.should_exit = True
        if self._main is not None:
            await self._main
            await self._server.shutdown(sockets=[self._sock])
            self._main = None

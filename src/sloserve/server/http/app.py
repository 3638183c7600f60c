"""A lean ASGI application for the v2 REST endpoints.

No web framework: the routes are few and fixed, and every microsecond of
per-request overhead is paid 5,000 times a second. The app only reads the body
(bounded), decodes, calls the data plane, and encodes; protocol logic lives in
:mod:`sloserve.dataplane`, wire formats in :mod:`sloserve.protocol`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from sloserve.dataplane.dataplane import DataPlane
from sloserve.errors import InvalidArgumentError, NotFoundError, PayloadTooLargeError, SloserveError
from sloserve.protocol.http_codec import decode_infer_request, encode_error, encode_infer_response
from sloserve.server.http.errors import HTTP_STATUS, RETRY_AFTER_S

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_HEADER_LENGTH = b"inference-header-content-length"


class _MethodNotAllowed(SloserveError):
    pass


class HttpApp:
    def __init__(self, dataplane: DataPlane, max_body_bytes: int) -> None:
        self._dp = dataplane
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except _MethodNotAllowed as error:
            await _send(send, 405, encode_error(error.message), _JSON)
        except SloserveError as error:
            headers = list(_JSON)
            retry = RETRY_AFTER_S.get(error.code)
            if retry is not None:
                headers.append((b"retry-after", retry.encode()))
            await _send(send, HTTP_STATUS[error.code], encode_error(error.message), headers)
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            await _send(send, 500, encode_error("internal server error; see the server log"), _JSON)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if not parts or parts[0] != "v2":
            raise NotFoundError(f"no such endpoint: {scope['path']}")
        rest = parts[1:]
        if not rest:
            _expect(method, "GET")
            return await _json(send, self._dp.server_metadata())
        head = rest[0]
        if head == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            _expect(method, "GET")
            ok = self._dp.live() if rest[1] == "live" else self._dp.ready()
            return await _send(send, 200 if ok else 503, b"", _JSON)
        if head == "models":
            return await self._models(method, rest[1:], scope, receive, send)
        if head == "repository":
            return await self._repository(method, rest[1:], receive, send)
        raise NotFoundError(f"no such endpoint: {scope['path']}")

    async def _models(self, method: str, rest: list[str], scope: Scope, receive: Receive, send: Send) -> None:
        if rest == ["stats"]:
            _expect(method, "GET")
            return await _json(send, self._dp.model_stats())
        if not rest or not rest[0]:
            raise NotFoundError("no such endpoint: /v2/models")
        name, version, action = rest[0], None, rest[1:]
        if len(action) >= 2 and action[0] == "versions":
            version, action = action[1], action[2:]
        if not action:
            _expect(method, "GET")
            return await _json(send, self._dp.model_metadata(name, version))
        if action == ["ready"]:
            _expect(method, "GET")
            ok = self._dp.model_ready(name, version)
            return await _send(send, 200 if ok else 503, b"", _JSON)
        if action == ["infer"]:
            _expect(method, "POST")
            return await self._infer(name, version, scope, receive, send)
        if action == ["stats"]:
            _expect(method, "GET")
            return await _json(send, self._dp.model_stats(name, version))
        if action == ["variants"] and version is None:
            _expect(method, "GET")
            return await _json(send, self._dp.variants(name))
        raise NotFoundError(f"no such endpoint: {scope['path']}")

    async def _infer(self, name: str, version: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        header_length: int | None = None
        content_length: int | None = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                content_length = _int_header(value, "Content-Length")
            elif key == _HEADER_LENGTH:
                header_length = _int_header(value, "Inference-Header-Content-Length")
        body = await self._read_body(receive, content_length)
        request = decode_infer_request(body, header_length, name, version)
        response = await self._dp.infer(request)
        payload, json_length = encode_infer_response(response, request)
        if json_length is None:
            return await _send(send, 200, payload, _JSON)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (_HEADER_LENGTH, str(json_length).encode()),
        ]
        await _send(send, 200, payload, headers)

    async def _read_body(self, receive: Receive, content_length: int | None) -> bytes:
        limit = self._max_body
        if content_length is not None and content_length > limit:
            raise PayloadTooLargeError(f"request body of {content_length} bytes is over the limit of {limit}")
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            return bytes(body)
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidArgumentError("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _repository(self, method: str, rest: list[str], receive: Receive, send: Send) -> None:
        _expect(method, "POST")
        body = await self._read_body(receive, None)
        options = _json_object(body)
        if rest == ["index"]:
            ready_only = bool(options.get("ready", False))
            return await _json(send, self._dp.repository_index(ready_only))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            if rest[2] == "load":
                await self._dp.load_model(rest[1])
            else:
                await self._dp.unload_model(rest[1])
            return await _send(send, 200, b"", _JSON)
        raise NotFoundError(f"no such endpoint: /v2/repository/{'/'.join(rest)}")


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise _MethodNotAllowed(f"method {method} not allowed here; use {allowed}")


def _int_header(value: bytes, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"header {name} must be an integer, got {value[:40]!r}") from None


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidArgumentError(f"request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    return value


async def _json(send: Send, value: Any) -> None:
    await _send(send, 200, orjson.dumps(value), _JSON)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

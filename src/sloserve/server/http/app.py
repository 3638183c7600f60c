"""The v2 REST endpoints: route, decode, call the data plane, encode.

No web framework: the routes are few and fixed, and every microsecond of
per-request overhead is paid 5,000 times a second. Requests arrive whole from
:mod:`sloserve.server.http.serve` (which bounds their bodies); protocol logic
lives in :mod:`sloserve.dataplane`, wire formats in :mod:`sloserve.protocol`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Coroutine
from types import CoroutineType
from typing import Any

import orjson

from sloserve.dataplane.dataplane import LAG_TURNS_SOON, DataPlane
from sloserve.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError, SloserveError
from sloserve.protocol.http_codec import decode_infer_request, encode_infer_response
from sloserve.protocol.types import InferRequest, InferResponse
from sloserve.server.http.errors import HTTP_STATUS, RETRY_AFTER_S
from sloserve.server.http.serve import HttpRequest, HttpResponse, Later, error_response

log = logging.getLogger(__name__)

_HEADER_LENGTH = b"inference-header-content-length"


class _MethodNotAllowed(SloserveError):
    pass


class HttpApp:
    """The v2 routes, as a handler for :class:`~sloserve.server.http.serve.HttpServer` (which bounds
    request bodies)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    def __call__(self, request: HttpRequest) -> Awaitable[HttpResponse]:
        """The response: a :class:`Later` when it is made without waiting, or is handed over from the batcher's
        turn (an inference) or after this turn's reads (a refusal); else a coroutine."""
        try:
            routed = self._route(request)
        except ResourceExhaustedError as error:
            return _refused(_error(error))
        except SloserveError as error:
            return Later(_error(error))
        if isinstance(routed, HttpResponse):
            return Later(routed)
        if isinstance(routed, Later):
            return routed
        return _awaited(routed)

    def _route(self, request: HttpRequest) -> HttpResponse | Later | Coroutine[Any, Any, HttpResponse]:
        """The response, or the coroutine that makes it: routing itself never waits, and a request's task
        resumes through every coroutine frame between it and what it awaits (twice a query, at least)."""
        method = request.method
        parts = request.path.strip("/").split("/")
        if not parts or parts[0] != "v2":
            raise NotFoundError(f"no such endpoint: {request.path}")
        rest = parts[1:]
        if not rest:
            _expect(method, "GET")
            return _json(self._dp.server_metadata())
        head = rest[0]
        if head == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            _expect(method, "GET")
            ok = self._dp.live() if rest[1] == "live" else self._dp.ready()
            return HttpResponse(200 if ok else 503)
        if head == "models":
            return self._models(method, rest[1:], request)
        if head == "repository":
            return self._repository(method, rest[1:], request.body)
        raise NotFoundError(f"no such endpoint: {request.path}")

    def _models(
        self, method: str, rest: list[str], request: HttpRequest
    ) -> HttpResponse | Later | Coroutine[Any, Any, HttpResponse]:
        if rest == ["stats"]:
            _expect(method, "GET")
            return _json(self._dp.model_stats())
        if not rest or not rest[0]:
            raise NotFoundError("no such endpoint: /v2/models")
        name, version, action = rest[0], None, rest[1:]
        if len(action) >= 2 and action[0] == "versions":
            version, action = action[1], action[2:]
        if not action:
            _expect(method, "GET")
            return _json(self._dp.model_metadata(name, version))
        if action == ["ready"]:
            _expect(method, "GET")
            ok = self._dp.model_ready(name, version)
            return HttpResponse(200 if ok else 503)
        if action == ["infer"]:
            _expect(method, "POST")
            return self._infer(name, version, request)
        if action == ["stats"]:
            _expect(method, "GET")
            return _json(self._dp.model_stats(name, version))
        if action == ["variants"] and version is None:
            _expect(method, "GET")
            return _json(self._dp.variants(name))
        raise NotFoundError(f"no such endpoint: {request.path}")

    def _infer(self, name: str, version: str | None, request: HttpRequest) -> Later | Coroutine[Any, Any, HttpResponse]:
        raw_length = request.header(_HEADER_LENGTH)
        header_length = None if raw_length is None else _int_header(raw_length, "Inference-Header-Content-Length")
        admit = functools.partial(self._dp.admit, name, version, request.received_s, turns=LAG_TURNS_SOON)
        infer_request = decode_infer_request(request.body, header_length, name, version, admit)
        infer_request.received_s = request.received_s
        later = Later()
        outcome = self._dp.infer_soon(infer_request, functools.partial(_answered, later, infer_request))
        if isinstance(outcome, InferResponse):
            return Later(_encoded(outcome, infer_request))
        if isinstance(outcome, CoroutineType):
            return _infer_awaited(outcome, infer_request)
        later.work = outcome  # queued: answered from the batcher's turn, dropped if the client goes first
        return later

    async def _repository(self, method: str, rest: list[str], body: bytes) -> HttpResponse:
        _expect(method, "POST")
        options = _json_object(body)
        if rest == ["index"]:
            ready_only = bool(options.get("ready", False))
            return _json(self._dp.repository_index(ready_only))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            if rest[2] == "load":
                await self._dp.load_model(rest[1])
            else:
                await self._dp.unload_model(rest[1])
            return HttpResponse(200)
        raise NotFoundError(f"no such endpoint: /v2/repository/{'/'.join(rest)}")


def _refused(response: HttpResponse) -> Later:
    """A refusal (429), handed over after the reads of this turn of the event loop rather than written from the
    read that made it: written there, between reads, its send cost ~13 µs against ~7 for an answer's, which the
    batch's turn writes back to back (`benchmarks/timeline.py`, `digits` at 20,500 queries/s, session 26). A
    refusal is most of what an overloaded server writes: past capacity (27,000 and 30,000 queries/s,
    `benchmarks/paired.py`, 8 reps each) this took 0.5-1.7 µs a query off the server's CPU in 23 of 24 reps, and
    attainment at 27,000 from 18.84% and 1.42% to 39.40% and 17.76%; below capacity the same within the spread
    (99.11% against 98.75% at 20,500, 98.16% against 98.74% at 22,000, 96.48% against 97.83% at 24,000)."""
    later = Later()
    asyncio.get_running_loop().call_soon(later.resolve, response)
    return later


def _error(error: SloserveError) -> HttpResponse:
    if isinstance(error, _MethodNotAllowed):
        return error_response(405, error.message)
    retry = RETRY_AFTER_S.get(error.code)
    response = error_response(HTTP_STATUS[error.code], error.message)
    if retry is None:
        return response
    return HttpResponse(response.status, response.body, headers=((b"retry-after", retry.encode()),))


async def _awaited(routed: Coroutine[Any, Any, HttpResponse]) -> HttpResponse:
    try:
        return await routed
    except SloserveError as error:
        return _error(error)


def _encoded(response: InferResponse, request: InferRequest) -> HttpResponse:
    payload, json_length = encode_infer_response(response, request)
    if json_length is None:
        return HttpResponse(200, payload)
    return HttpResponse(200, payload, b"application/octet-stream", ((_HEADER_LENGTH, str(json_length).encode()),))


def _answered(later: Later, request: InferRequest, outcome: InferResponse | SloserveError) -> None:
    """An inference's answer, handed over from the batcher's turn."""
    try:
        later.resolve(_error(outcome) if isinstance(outcome, SloserveError) else _encoded(outcome, request))
    except Exception:
        log.exception("unexpected error answering %s", request.model_name)
        later.resolve(error_response(500, "internal server error; see the server log"))


async def _infer_awaited(outcome: Coroutine[Any, Any, InferResponse], request: InferRequest) -> HttpResponse:
    return _encoded(await outcome, request)


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


def _json(value: Any) -> HttpResponse:
    return HttpResponse(200, orjson.dumps(value))

"""``inference.GRPCInferenceService`` on grpc.aio: convert, call the data plane, convert back."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from sloserve.dataplane.dataplane import DataPlane
from sloserve.errors import SloserveError
from sloserve.protocol.generated import inference_pb2 as pb
from sloserve.protocol.generated import inference_pb2_grpc as pb_grpc
from sloserve.protocol.grpc_codec import request_from_proto, response_to_proto
from sloserve.server.grpc.errors import GRPC_STATUS

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def _parse(value: Any, message: M) -> M:
    return json_format.ParseDict(value, message, ignore_unknown_fields=True)


async def _call(context: grpc.aio.ServicerContext[Any, Any], work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; a SloserveError becomes its status code, anything else INTERNAL."""
    try:
        return await work()
    except SloserveError as error:
        await context.abort(GRPC_STATUS[error.code], error.message)
    except Exception:
        log.exception("unexpected error in a gRPC call")
        await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
    raise AssertionError("unreachable: abort raises")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version or None))

        return await _call(context, work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return _parse(self._dp.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            meta = self._dp.model_metadata(request.name, request.version or None)
            return _parse(meta, pb.ModelMetadataResponse())

        return await _call(context, work)

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        admit = functools.partial(self._dp.admit, request.model_name, request.model_version or None, None)
        response = await self._dp.infer(request_from_proto(request, admit))
        return response_to_proto(response)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await _call(context, lambda: self._infer(request))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on a stream run concurrently; each answer (or its error) is sent when ready."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                reply = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except SloserveError as error:
                reply = pb.ModelStreamInferResponse(error_message=error.message)
            except Exception as error:
                log.exception("unexpected error in a streamed inference")
                reply = pb.ModelStreamInferResponse(error_message=f"internal server error: {error!r}")
            await answers.put(reply)

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
            await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await answers.get()) is not None:
                yield reply
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        async def work() -> pb.ModelStatisticsResponse:
            stats = self._dp.model_stats(request.name or None, request.version or None)
            return _parse(stats, pb.ModelStatisticsResponse())

        return await _call(context, work)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        async def work() -> pb.RepositoryIndexResponse:
            return _parse({"models": self._dp.repository_index(request.ready)}, pb.RepositoryIndexResponse())

        return await _call(context, work)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def work() -> pb.RepositoryModelLoadResponse:
            await self._dp.load_model(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await _call(context, work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def work() -> pb.RepositoryModelUnloadResponse:
            await self._dp.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _call(context, work)


class GrpcServer:
    """The gRPC transport; ``port`` is known after :meth:`start` (0 picks a free one)."""

    def __init__(self, dataplane: DataPlane, host: str, port: int, max_message_bytes: int, grace_s: float):
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(dataplane), self._server)
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._grace_s = grace_s
        self.port = 0

    async def start(self) -> None:
        self.port = self._server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"could not bind gRPC to {self._address}")
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(self._grace_s)

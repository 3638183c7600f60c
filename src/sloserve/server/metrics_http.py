"""The Prometheus scrape endpoint: ``GET /metrics`` on its own port."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from sloserve.metrics import ServingMetrics
from sloserve.server.http.app import Receive, Scope, Send


class MetricsApp:
    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            status, body, ctype = 200, self._metrics.exposition(), CONTENT_TYPE_LATEST.encode()
        else:
            status, body, ctype = 404, b"not found: try GET /metrics\n", b"text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

"""The Prometheus scrape endpoint: ``GET /metrics`` on its own port."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from sloserve.metrics import ServingMetrics
from sloserve.server.http.serve import HttpRequest, HttpResponse


class MetricsApp:
    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/metrics" and request.method == "GET":
            return HttpResponse(200, self._metrics.exposition(), CONTENT_TYPE_LATEST.encode())
        return HttpResponse(404, b"not found: try GET /metrics\n", b"text/plain")

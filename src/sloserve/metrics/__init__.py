"""Every Prometheus metric sloserve exports, defined in one module."""

from sloserve.metrics.serving import ServingMetrics

__all__ = ["ServingMetrics"]

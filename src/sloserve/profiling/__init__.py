"""Profiling: latency curves, throughput, accuracy, memory, cost and graph statistics per variant."""

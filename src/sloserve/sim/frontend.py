"""The front ends a request waits for before admission: the HTTP/gRPC process that parses it, selects its
variant and encodes its answer (:class:`~sloserve.sim.engine.Simulator` with ``frontend_ms`` > 0).

Two models of one: a FIFO server that holds each request its cost (:func:`frontend_exit_ms`), and an event loop
that works in cycles and pays a wake-up whenever it idled (:func:`frontend_cycles_ms`), as the server's does;
:func:`frontend_service_ms` varies a request's cost with the machine's speed over time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from heapq import heappop, heappush
from itertools import pairwise
from typing import Any

import numpy as np

from sloserve.sim.workload import FloatArray


def frontend_service_ms(
    arrivals_ms: FloatArray, service_ms: float, sigma: float, window_ms: float, rng: np.random.Generator
) -> FloatArray:
    """What each request (sorted arrivals) costs its front end: ``service_ms`` times the machine's speed factor
    of its arrival's window (lognormal with ``sigma`` and mean 1, so that ``service_ms`` stays the mean cost, as
    measured; one draw per window, in window order)."""
    if sigma <= 0 or service_ms <= 0 or len(arrivals_ms) == 0:
        return np.full(len(arrivals_ms), max(service_ms, 0.0))
    window = (arrivals_ms // window_ms).astype(np.int64)
    factors = rng.lognormal(-sigma * sigma / 2, sigma, int(window[-1]) + 1)
    return np.asarray(service_ms * factors[window], dtype=np.float64)


def frontend_exit_ms(arrivals_ms: FloatArray, service_ms: float | FloatArray, workers: int) -> FloatArray:
    """When each request (sorted arrivals) leaves ``workers`` FIFO front ends that each hold it ``service_ms``
    (one for all, or one per request).

    Every request takes the front end that frees first. The engine admits requests in
    order, so one never leaves before the request ahead of it (with one service time for
    all that is the order they finish in anyway; with several front ends and varying
    times it holds back the few that would overtake).
    """
    services = np.broadcast_to(np.asarray(service_ms, dtype=np.float64), arrivals_ms.shape)
    if len(arrivals_ms) == 0 or not services.any():
        return arrivals_ms.copy()
    exits = np.empty_like(arrivals_ms)
    free = [0.0] * workers
    last = -math.inf
    for i, (arrival, service) in enumerate(zip(arrivals_ms.tolist(), services.tolist(), strict=True)):
        start = max(arrival, heappop(free))
        done = start + service
        heappush(free, done)
        last = exits[i] = max(done, last)
    return exits


def frontend_cycles_ms(
    arrivals_ms: FloatArray,
    services_ms: FloatArray,
    wake_ms: FloatArray,
    loops: np.ndarray[Any, np.dtype[np.int64]] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Front ends that are event loops: when each request (sorted arrivals) leaves its loop, and what it cost it.

    A loop works in cycles: each reads every request that has come to it, handles them one after another (their
    ``services_ms``) and hands them all over at its end. A busy loop starts the next cycle as one ends. An idle one
    first wakes up, for the ``wake_ms`` of the request that wakes it, and reads what has come by then: the
    wake-up costs the loop that much too, shared by the requests its cycle reads. So a request alone on a lightly
    loaded loop pays a whole wake-up, and on a loop that never idles none. ``loops``: the loop each request comes
    to (None: one).
    """
    n = len(arrivals_ms)
    exits = np.empty(n, dtype=np.float64)
    shares = np.empty(n, dtype=np.float64)
    if loops is None:
        groups = [np.arange(n)]
    else:
        by_loop = np.argsort(loops, kind="stable")  # each loop's requests, still in arrival order
        bounds = np.searchsorted(loops[by_loop], np.arange(int(loops.max(initial=0)) + 2))
        groups = [by_loop[a:b] for a, b in pairwise(bounds) if b > a]
    for index in groups:
        arrivals = arrivals_ms[index].tolist()
        prefix = np.concatenate(([0.0], np.cumsum(services_ms[index]))).tolist()
        wakes = wake_ms[index].tolist()
        left: list[float] = []
        share: list[float] = []
        free, k, m = -math.inf, 0, len(arrivals)
        while k < m:
            idle = arrivals[k] > free
            wake = wakes[k] if idle else 0.0
            start = arrivals[k] + wake if idle else free
            j = bisect_right(arrivals, start, k + 1)
            free = start + prefix[j] - prefix[k]
            left += [free] * (j - k)
            share += [wake / (j - k)] * (j - k)
            k = j
        exits[index] = left
        shares[index] = share
    return exits, services_ms + shares

"""Scatter-gather: a request larger than the version's best batch, split into chunks and put back in order.

The chunks are row ranges of the request (:func:`plan_chunks`: as few as the
best batch allows, sizes within one row of each other), each submitted on the
normal path (the batcher, so it is routed, hedged and retried like any batch:
a chunk whose replica dies is run again on another). Answers are gathered by
chunk index, not by arrival, so the outputs are the rows in the request's order
whatever order the replicas finish in; for a model that treats rows
independently and deterministically they equal an unsplit run bit for bit. If a
chunk fails, the request fails with that error and the chunks not yet run are
withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from sloserve.dataplane.batcher import RowsResult
from sloserve.replica import Arrays

Submit = Callable[[Arrays, int], Awaitable[RowsResult]]
"""Queue ``rows`` rows of inputs on the normal path; resolves with their outputs."""

MAX_CHUNKS = 64
"""A request may be split into at most this many best-size batches (validation's row bound)."""


def plan_chunks(rows: int, best_batch: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges covering ``rows`` in order, each at most ``best_batch`` rows."""
    if rows <= 0 or best_batch <= 0:
        raise ValueError(f"cannot split {rows} rows into batches of {best_batch}")
    count = -(-rows // best_batch)
    base, extra = divmod(rows, count)
    ranges = []
    start = 0
    for index in range(count):
        stop = start + base + (1 if index < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def split(inputs: Arrays, ranges: list[tuple[int, int]]) -> list[dict[str, np.ndarray[Any, Any]]]:
    return [{name: array[start:stop] for name, array in inputs.items()} for start, stop in ranges]


def gather(results: list[RowsResult]) -> RowsResult:
    """One result from the chunks' results, in chunk order."""
    names = results[0].outputs.keys()
    outputs = {name: np.concatenate([r.outputs[name] for r in results]) for name in names}
    return RowsResult(
        outputs=outputs,
        queue_s=max(r.queue_s for r in results),
        compute_s=max(r.compute_s for r in results),
    )


async def scatter_gather(submit: Submit, inputs: Arrays, rows: int, best_batch: int) -> RowsResult:
    """Run ``inputs`` (``rows`` rows) as chunks of at most ``best_batch`` rows; the outputs in row order."""
    ranges = plan_chunks(rows, best_batch)
    waiting: list[asyncio.Future[RowsResult]] = []
    try:
        for chunk, (start, stop) in zip(split(inputs, ranges), ranges, strict=True):
            waiting.append(asyncio.ensure_future(submit(chunk, stop - start)))
        results = await asyncio.gather(*waiting)
    except BaseException:
        for future in waiting:
            if not future.done():
                future.cancel()  # still queued: the batcher skips it
            else:
                with contextlib.suppress(BaseException):
                    future.exception()
        raise
    return gather(list(results))

"""The small interface every replica implements.

Batching, routing and (later) hedging and selection talk to replicas only
through :class:`Replica`; they do not know whether a replica is a local worker
process (``cluster/local.py``) or a Ray actor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from sloserve.types import ReplicaId

Arrays = Mapping[str, np.ndarray[Any, Any]]


class ReplicaOutputs(dict[str, np.ndarray[Any, Any]]):
    """A batch's outputs as a replica may return them, with when the replica finished the batch.

    ``done_at`` is on the server's clock (monotonic seconds). A saturated event loop can take
    milliseconds to pick an answer up; that wait is the front end's, not the replica's, and
    must not make the replica look slow (service-time corrections, AIMD). None: not known.
    """

    done_at: float | None = None


class Replica(Protocol):
    @property
    def id(self) -> ReplicaId: ...

    @property
    def healthy(self) -> bool:
        """True when the replica can take a batch now (started and not restarting)."""
        ...

    @property
    def outstanding(self) -> int:
        """Batches sent and not yet answered."""
        ...

    @property
    def capacity(self) -> int:
        """How many batches may be in flight at once."""
        ...

    async def start(self) -> None:
        """Start the replica and wait until it can serve; raises on failure."""
        ...

    async def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        """Run one batch. Raises ReplicaDiedError if the replica died while running it
        (the caller may retry elsewhere) and other SloserveErrors for model failures."""
        ...

    async def stop(self) -> None:
        """Stop the replica, failing whatever is still in flight with UnavailableError."""
        ...

"""InlineReplica: a small model run in the server's own process, on its event loop.

A worker process costs every batch a round trip: the shared-memory copy, a pipe
message each way, two process wake-ups. For the small models sloserve is often
given (scikit-learn conversions, small MLPs) that round trip is most of the
work: on 2 cores, ~80 µs of the server's CPU and ~70 µs of the worker's for a
batch the model itself computes in 10-20 µs. Inline, the batch costs the
computation and nothing else (Triton runs its ONNX Runtime backend in its own
process the same way).

What it gives up: the computation blocks the event loop while it runs (so it is
for models whose batches take well under a millisecond), a batch cannot be
cancelled or hedged once started (there is nothing to race: it has finished when
``run`` returns), and a crash in the runtime takes the server down with it
(the model was loaded and run in a worker when it was registered). Which models
run inline is :func:`runs_inline`'s call, from the model config's
``replica_kind``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sloserve.errors import UnavailableError
from sloserve.model_config import REPLICA_INLINE, REPLICA_PROCESS
from sloserve.replica import Arrays
from sloserve.types import ReplicaId

if TYPE_CHECKING:
    from sloserve.runtime.session import OnnxSession

INLINE_MAX_BYTES: Final = 1 << 20
"""``replica_kind: auto`` runs a variant inline when its folder (the model and any external data) holds at most
this much: ~250,000 FP32 weights, a forward pass of tens of µs per row."""


def runs_inline(replica_kind: str, artifact: Path) -> bool:
    """Whether a replica of ``artifact`` runs in the server's process: ``inline``, ``process``, or (``auto``)
    when the variant is small (:data:`INLINE_MAX_BYTES`)."""
    if replica_kind in (REPLICA_INLINE, REPLICA_PROCESS):
        return replica_kind == REPLICA_INLINE
    try:
        size = sum(f.stat().st_size for f in artifact.parent.iterdir() if f.is_file())
    except OSError:
        return False
    return size <= INLINE_MAX_BYTES


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    STOPPED = "stopped"


class InlineReplica:
    """A :class:`~sloserve.replica.Replica` that runs the model in this process, one batch at a time.

    ``start`` loads the model in a thread (the event loop keeps serving meanwhile); ``run`` computes
    the batch on the caller's thread and returns every output when given no names."""

    inline = True
    """Runs on the event loop (variant selection counts the queues of all such replicas as one)."""

    def __init__(self, replica_id: ReplicaId, model_path: Path) -> None:
        self._id = replica_id
        self._model_path = model_path
        self._session: OnnxSession | None = None
        self._state = _State.NEW
        self._all_outputs: tuple[str, ...] = ()

    @property
    def id(self) -> ReplicaId:
        return self._id

    @property
    def healthy(self) -> bool:
        return self._state is _State.READY

    @property
    def outstanding(self) -> int:
        return 0  # a batch runs to its end inside run(): none is ever left in flight

    @property
    def capacity(self) -> int:
        return 1

    @property
    def pid(self) -> None:
        """No process of its own (the ``LocalReplica`` attribute, for listings)."""
        return None

    @property
    def state(self) -> str:
        """new, starting, ready or stopped."""
        return self._state.value

    async def start(self) -> None:
        if self._state is not _State.NEW:
            return
        self._state = _State.STARTING
        from sloserve.runtime.session import OnnxSession  # onnxruntime loads with the first inline replica

        try:
            session = await asyncio.to_thread(OnnxSession, self._model_path, 1)
        except BaseException:
            self._state = _State.STOPPED
            raise
        if self._state is _State.STOPPED:  # stopped while loading
            return
        self._session = session
        self._all_outputs = tuple(t.name for t in session.outputs)
        self._state = _State.READY

    async def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        return self.compute(inputs, output_names)

    def compute(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        """``run``, synchronously: the batcher calls it directly (no task, no turn of the loop per batch)."""
        session = self._session
        if session is None:
            raise UnavailableError(f"replica {self._id} is {self._state.value}, not running")
        return session.run(inputs, output_names or self._all_outputs)

    async def stop(self) -> None:
        self._state = _State.STOPPED
        self._session = None

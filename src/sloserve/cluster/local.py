"""LocalReplica: one model served by a worker process on this machine.

The worker is started with the multiprocessing *spawn* context (the server runs
asyncio, threads and gRPC, so it never forks) and runs :func:`worker.main`.
Tensors cross in shared memory slots (:mod:`sloserve.cluster.shm`); only a
small control message goes over the pipe. Each worker process is held by a
:class:`~sloserve.cluster.worker_handle.WorkerHandle`, which never blocks the
event loop on it.

Lifecycle::

    NEW ─start()─► STARTING ─ready─► READY ─worker died─► RESTARTING ─ready─► READY
                      │                                     │ attempts used up
                      └─load failed: start() raises         └──────────► FAILED
    any state ─stop()─► STOPPED

When the worker dies, every batch in flight fails with ``ReplicaDiedError``
(the caller may retry elsewhere), its slots are unlinked, and a new worker is
started in the background with exponential backoff.

Cancelling a ``run`` (a hedged batch whose twin won) tells the worker to drop the
batch if it has not started; ``run`` then waits until the worker has dropped or
answered it before it lets the cancellation through, so a caller that counts
slots sees this one busy exactly as long as the worker is.

Faults (:class:`~sloserve.cluster.faults.FaultSpec`: stragglers, crashes) are
injected in the worker only when the code that builds the replica passes them.

Spawn re-imports the parent's ``__main__`` module in every worker (as
``__mp_main__``) before :func:`worker.main` runs: keep entry-point modules
cheap to import, or every worker pays for (and holds) what they import.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

from sloserve.clock import Clock, SystemClock
from sloserve.cluster import worker
from sloserve.cluster.faults import FaultSpec
from sloserve.cluster.worker_handle import Outputs, WorkerHandle
from sloserve.errors import InvalidArgumentError, ReplicaDiedError, UnavailableError
from sloserve.replica import Arrays, Replica
from sloserve.types import ReplicaId

log = logging.getLogger(__name__)


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class LocalReplica:
    """A :class:`~sloserve.replica.Replica` running the model in a local worker process.

    ``max_batch_rows`` sizes the shared memory slots (a bigger batch still works:
    its slot grows). Up to ``capacity`` batches are in flight at once (more
    callers wait for a slot); the worker runs them in order, so while it computes
    one the next is already waiting. ``run`` with no output names returns every
    output; the arrays it returns are the caller's own (copied out of the slot).
    A worker that dies is restarted up to ``max_restart_attempts`` times in a row,
    waiting ``restart_backoff_s`` doubled at each attempt. ``faults`` injects
    stragglers or crashes in the worker (tests and benchmarks; None: none).
    """

    def __init__(
        self,
        replica_id: ReplicaId,
        model_path: Path,
        *,
        intra_op_threads: int = 1,
        max_batch_rows: int,
        capacity: int = 2,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
        max_restart_attempts: int = 5,
        restart_backoff_s: float = 0.1,
        clock: Clock | None = None,
        faults: FaultSpec | None = None,
    ) -> None:
        if capacity < 1 or max_batch_rows < 1 or intra_op_threads < 1:
            raise InvalidArgumentError("capacity, max_batch_rows and intra_op_threads must be at least 1")
        self._id = replica_id
        self._model_path = model_path
        self._intra_op_threads = intra_op_threads
        self._max_batch_rows = max_batch_rows
        self._capacity = capacity
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._max_restart_attempts = max_restart_attempts
        self._restart_backoff_s = restart_backoff_s
        self._clock: Clock = clock or SystemClock()
        self._state = _State.NEW
        self._worker: WorkerHandle | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._restarts = 0
        self._faults = faults if faults is not None and faults.active else None
        self._dropped_before = 0

    # ------------------------------------------------------------ Replica protocol

    @property
    def id(self) -> ReplicaId:
        return self._id

    @property
    def healthy(self) -> bool:
        return self._state is _State.READY and self._worker is not None and self._worker.alive

    @property
    def outstanding(self) -> int:
        return self._worker.outstanding if self._worker is not None else 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def pid(self) -> int | None:
        """The current worker's process id (None when there is none)."""
        return self._worker.pid if self._worker is not None and self._worker.alive else None

    @property
    def state(self) -> str:
        """new, starting, ready, restarting, failed (gave up restarting) or stopped."""
        return self._state.value

    @property
    def restarts(self) -> int:
        """Workers started to replace one that died (attempts, successful or not)."""
        return self._restarts

    @property
    def dropped(self) -> int:
        """Batches cancelled while still queued in a worker, which the worker then never ran."""
        current = self._worker.dropped if self._worker is not None else 0
        return self._dropped_before + current

    async def start(self) -> None:
        if self._state is _State.READY:
            return
        if self._state is not _State.NEW:
            raise UnavailableError(f"replica {self._id} cannot start: it is {self._state.value}")
        self._state = _State.STARTING
        try:
            await self._launch()
        except BaseException:
            if self._state is _State.STARTING:
                self._state = _State.NEW
            raise
        if self._state is _State.STARTING:
            self._state = _State.READY

    async def run(self, inputs: Arrays, output_names: Sequence[str]) -> Outputs:
        worker = self._worker
        if self._state is not _State.READY or worker is None:
            if self._state in (_State.RESTARTING, _State.FAILED, _State.STOPPED):
                # Chosen while it was up; it died or stopped since: the batch never ran, retry elsewhere.
                raise ReplicaDiedError(f"replica {self._id} is {self._state.value}")
            raise UnavailableError(f"replica {self._id} is {self._state.value}")
        slot = await worker.acquire()
        try:
            call = worker.submit(slot, inputs, output_names)
        except BaseException:
            worker.release(slot)
            raise
        try:
            return await call.future
        except asyncio.CancelledError:
            # Dropped if still queued, else it runs and the answer is discarded. Either way
            # the slot stays busy until the worker says so.
            await asyncio.shield(worker.cancel(call))
            raise

    async def stop(self) -> None:
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.shutdown(self._stop_timeout_s)

    # ------------------------------------------------------------ workers

    async def _launch(self) -> None:
        """Start a worker and wait until it has loaded the model."""
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=worker.main,
            args=(child_conn, str(self._model_path), self._intra_op_threads, self._faults),
            name=f"sloserve-{self._id}",
            daemon=True,
        )
        starting = asyncio.ensure_future(asyncio.to_thread(proc.start))  # fork+exec: keep it off the loop
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(lambda _: _kill_quietly(proc))
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        if self._state is _State.STOPPED:
            _kill_quietly(proc)
            parent_conn.close()
            raise UnavailableError(f"replica {self._id} was stopped while starting")
        current = WorkerHandle(self._id, proc, parent_conn, self._on_worker_death)
        if self._worker is not None:
            self._dropped_before += self._worker.dropped
        self._worker = current
        try:
            await current.wait_ready(self._start_timeout_s, self._capacity, self._max_batch_rows)
        except BaseException:
            await current.shutdown(self._stop_timeout_s)
            if self._worker is current:
                self._worker = None
            raise
        log.info("replica %s: worker pid %s ready", self._id, current.pid)

    def _on_worker_death(self, dead: WorkerHandle) -> None:
        if dead is not self._worker or self._state is not _State.READY:
            return  # a start in progress or a restart loop handles it
        self._state = _State.RESTARTING
        self._restart_task = asyncio.create_task(self._restart(dead))

    async def _restart(self, dead: WorkerHandle) -> None:
        await dead.reap()
        for attempt in range(self._max_restart_attempts):
            await self._clock.sleep(self._restart_backoff_s * 2**attempt)
            if self._state is not _State.RESTARTING:
                return
            self._restarts += 1
            try:
                await self._launch()
            except Exception as exc:
                log.warning("replica %s: restart attempt %d failed: %s", self._id, attempt + 1, exc)
                continue
            if self._state is _State.RESTARTING:
                self._state = _State.READY
            return
        self._state = _State.FAILED
        log.error("replica %s: gave up after %d restart attempts", self._id, self._max_restart_attempts)


def _kill_quietly(proc: BaseProcess) -> None:
    """Kill a worker no WorkerHandle watches; multiprocessing reaps it on its next start or at exit."""
    with contextlib.suppress(Exception):
        proc.kill()


if TYPE_CHECKING:

    def _is_a_replica(replica: LocalReplica) -> Replica:
        return replica

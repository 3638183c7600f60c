"""LocalReplica: one model served by a worker process on this machine.

The worker is started with the multiprocessing *spawn* context (the server runs
asyncio, threads and gRPC, so it never forks) and runs :func:`worker.main`.
Tensors cross in shared memory slots (:mod:`sloserve.cluster.shm`); only a
small control message goes over the pipe. The event loop never blocks on the
worker: replies and the worker's exit are watched with ``loop.add_reader`` on
the pipe and on the process sentinel.

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
import itertools
import logging
import multiprocessing
import select
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sloserve.clock import Clock, SystemClock
from sloserve.cluster import shm, worker
from sloserve.cluster.faults import FaultSpec
from sloserve.errors import (
    InternalError,
    InvalidArgumentError,
    ReplicaDiedError,
    SloserveError,
    UnavailableError,
    error_from_code,
)
from sloserve.replica import Arrays, Replica
from sloserve.types import ReplicaId

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
_Outputs = dict[str, Array]


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(slots=True)
class _Call:
    future: asyncio.Future[_Outputs]
    slot: int
    rows: int
    seq: int
    settled: asyncio.Future[None] | None = None
    """Created by a cancel: resolved when the worker has answered or dropped the batch, or died."""


class _Worker:
    """One worker process with its pipe and slots: one generation of a LocalReplica.

    Dies once. Everything it owns (process, pipe, slots, waiting callers) is
    released by :meth:`_die` or :meth:`shutdown`.
    """

    def __init__(
        self,
        replica_id: ReplicaId,
        proc: BaseProcess,
        conn: Connection,
        on_death: Callable[[_Worker], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._replica_id = replica_id
        self.proc = proc
        self.pid: int | None = proc.pid
        self._conn = conn
        self._on_death = on_death
        self._ready: asyncio.Future[shm.Ready] = self._loop.create_future()
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, _Call] = {}
        self._free: deque[int] = deque()
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._slots: shm.SlotPool | None = None
        self._seq = itertools.count()
        self._out_row_bytes = 0
        self._output_names: tuple[str, ...] = ()
        self._closed = False  # no new work; pending failed
        self._shutdown_task: asyncio.Task[None] | None = None
        self._reaped = False
        self.dropped = 0
        self._loop.add_reader(conn.fileno(), self._on_readable)
        self._loop.add_reader(proc.sentinel, self._on_exit)

    # ------------------------------------------------------------ lifecycle

    async def wait_ready(self, timeout_s: float, capacity: int, max_batch_rows: int) -> None:
        """Wait for the model to load, then create the slots."""
        try:
            ready = await asyncio.wait_for(self._ready, timeout_s)
        except TimeoutError:
            raise UnavailableError(
                f"replica {self._replica_id}: worker pid {self.pid} did not load the model within {timeout_s:g} s"
            ) from None
        if self._closed:  # stopped, or died, after it reported ready
            raise UnavailableError(f"replica {self._replica_id}: worker pid {self.pid} is gone")
        in_row = shm.row_nbytes(ready.inputs)
        self._out_row_bytes = shm.row_nbytes(ready.outputs)
        tensors = len(ready.inputs) + len(ready.outputs)
        self._slots = shm.SlotPool(capacity, max_batch_rows * (in_row + self._out_row_bytes) + shm.ALIGN * tensors)
        self._free.extend(range(capacity))
        self._output_names = tuple(t.name for t in ready.outputs)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return not self._closed

    async def shutdown(self, timeout_s: float) -> None:
        """Fail work in flight with UnavailableError, ask the worker to exit, then
        terminate and kill it if it does not. Idempotent."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout_s))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout_s: float) -> None:
        self._on_death = _ignore_death
        if not self._closed:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send_bytes(shm.encode(shm.Shutdown()))
        self._close(UnavailableError, "was stopped")
        if self._exited.done() or self.proc.exitcode is not None:
            self._exited_now()
        else:
            for escalate in (self.proc.terminate, self.proc.kill):
                if await self._wait_exited(timeout_s):
                    break
                log.warning("replica %s: worker pid %s did not exit; %s", self._replica_id, self.pid, escalate.__name__)
                escalate()
            else:
                await self._wait_exited(timeout_s)
        await self.reap()

    async def _wait_exited(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout_s)
        except TimeoutError:
            return False
        return True

    async def reap(self) -> None:
        """Collect the exited process (its sentinel fires a moment before it can be waited for).
        Idempotent: a replica stopped while it waits to restart reaps the dead worker again."""
        if self._reaped:
            return
        for _ in range(500):
            if self.proc.exitcode is not None:
                break
            await asyncio.sleep(0.01)
        if self._reaped:
            return
        self._reaped = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.proc.sentinel)
        with contextlib.suppress(ValueError):
            self.proc.close()

    # ------------------------------------------------------------ batches

    async def acquire(self) -> int:
        """A free slot, waiting for one if all are in use."""
        if self._closed:
            raise self._gone_error()
        if self._free:
            return self._free.popleft()
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())  # handed a slot while being cancelled
            raise

    def release(self, slot: int) -> None:
        if self._closed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)

    def submit(self, slot: int, inputs: Arrays, output_names: Sequence[str]) -> _Call:
        """Write a batch into ``slot`` and send it; the call's future resolves with its outputs."""
        if self._closed or self._slots is None:
            raise self._gone_error()
        packed = shm.pack(inputs.items())
        rows = shm.batch_rows(packed.refs)
        needed = packed.end + self._out_row_bytes * rows + shm.ALIGN * max(1, len(self._output_names))
        segment = self._slots.ensure(slot, needed)
        shm.write(segment.buf, packed)
        seq = next(self._seq)
        names = tuple(output_names) or self._output_names
        request = shm.RunRequest(seq, slot, segment.name, packed.refs, packed.end, names)
        try:
            self._conn.send_bytes(shm.encode(request))
        except OSError:
            self._die("its pipe broke")
            raise self._gone_error() from None
        future: asyncio.Future[_Outputs] = self._loop.create_future()
        call = _Call(future, slot, rows, seq)
        self._pending[seq] = call
        return call

    def cancel(self, call: _Call) -> asyncio.Future[None]:
        """Ask the worker to drop ``call`` if it has not started; the result resolves once the
        worker has dropped or answered it (or died)."""
        if call.settled is None:
            call.settled = self._loop.create_future()
            if self._pending.get(call.seq) is not call:
                call.settled.set_result(None)
            else:
                try:
                    self._conn.send_bytes(shm.encode(shm.Cancel(call.seq)))
                except (OSError, ValueError):
                    pass  # the pipe broke: the death handler settles it
        return call.settled

    # ------------------------------------------------------------ events

    def _on_readable(self) -> None:
        """One message per call: the selector calls again while more are waiting
        (``Connection.poll`` would cost a new selector, ~10 µs, per message)."""
        try:
            self._dispatch(shm.decode(self._conn.recv_bytes()))
        except (EOFError, OSError):
            code = self._exitcode_soon()
            self._die("its pipe closed" if code is None else _describe_exit(code))
        except SloserveError as exc:
            log.error("replica %s: %s; killing worker pid %s", self._replica_id, exc.message, self.pid)
            self._die("it sent a malformed message")

    def _on_exit(self) -> None:
        self._loop.remove_reader(self.proc.sentinel)
        if not self._closed:
            # Take what it said before it went (a LoadFailed, replies), up to the EOF.
            while not self._closed and select.select([self._conn.fileno()], [], [], 0)[0]:
                self._on_readable()
        self._die(_describe_exit(self._exitcode_soon()))
        self._exited_now()

    def _exitcode_soon(self) -> int | None:
        """The sentinel fires while the process tears down, a moment before it can be
        waited for; wait at most 2 ms (only when a worker dies) to say how it died."""
        deadline = time.monotonic() + 0.002
        while (code := self.proc.exitcode) is None and time.monotonic() < deadline:
            time.sleep(0.0001)
        return code

    def _exited_now(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.proc.sentinel)

    def _dispatch(self, msg: shm.Message) -> None:
        if isinstance(msg, shm.RunReply):
            call = self._pending.pop(msg.seq, None)
            if call is None:
                log.warning("replica %s: reply for unknown batch %d", self._replica_id, msg.seq)
                return
            result: _Outputs | SloserveError
            if msg.error is not None:
                result = error_from_code(*msg.error)
            else:
                try:
                    result = self._read_outputs(call, msg)
                except SloserveError as exc:
                    result = exc
            self.release(call.slot)
            if not call.future.done():
                if isinstance(result, SloserveError):
                    call.future.set_exception(result)
                else:
                    call.future.set_result(result)
            _settle(call)
        elif isinstance(msg, shm.Dropped):
            call = self._pending.pop(msg.seq, None)
            if call is None:
                return
            self.dropped += 1
            self.release(call.slot)
            if not call.future.done():
                call.future.set_exception(UnavailableError(f"replica {self._replica_id}: the batch was cancelled"))
            _settle(call)
        elif self._ready.done():
            return
        elif isinstance(msg, shm.Ready):
            self._ready.set_result(msg)
        elif isinstance(msg, shm.LoadFailed):
            self._ready.set_exception(error_from_code(msg.code, msg.message))

    def _read_outputs(self, call: _Call, msg: shm.RunReply) -> _Outputs:
        assert self._slots is not None
        nbytes = sum(shm.align(ref.nbytes) for ref in msg.outputs)
        if call.rows > 0:
            self._out_row_bytes = max(self._out_row_bytes, -(-nbytes // call.rows))
        segment = self._slots.segment(call.slot)
        # Copies: the slot is reused by the next batch.
        return shm.read(segment.buf, msg.outputs, copy=True, inline=msg.inline)

    # ------------------------------------------------------------ teardown

    def _die(self, reason: str) -> None:
        """The worker is gone or unusable: fail everything and release what it held."""
        if self._closed:
            return
        if self.proc.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.kill()
        log.warning("replica %s: worker pid %s died (%s)", self._replica_id, self.pid, reason)
        self._close(ReplicaDiedError, f"worker pid {self.pid} died ({reason})")
        self._on_death(self)

    def _close(self, error: type[UnavailableError], what: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._conn.fileno())
        message = f"replica {self._replica_id}: {what}"
        if not self._ready.done():
            self._ready.set_exception(
                error(message) if error is UnavailableError else InternalError(f"{message} before it was ready")
            )
        for call in self._pending.values():
            if not call.future.done():
                call.future.set_exception(error(f"{message} while running a batch"))
            _settle(call)
        self._pending.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error(f"{message} while a batch waited for a slot"))
        self._waiters.clear()
        self._free.clear()
        if self._slots is not None:
            self._slots.close()
        self._conn.close()

    def _gone_error(self) -> UnavailableError:
        return ReplicaDiedError(f"replica {self._replica_id}: worker pid {self.pid} is gone")


def _ignore_death(worker: _Worker) -> None:
    return None


def _settle(call: _Call) -> None:
    if call.settled is not None and not call.settled.done():
        call.settled.set_result(None)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "it exited"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


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
        self._worker: _Worker | None = None
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

    async def run(self, inputs: Arrays, output_names: Sequence[str]) -> _Outputs:
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
        current = _Worker(self._id, proc, parent_conn, self._on_worker_death)
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

    def _on_worker_death(self, dead: _Worker) -> None:
        if dead is not self._worker or self._state is not _State.READY:
            return  # a start in progress or a restart loop handles it
        self._state = _State.RESTARTING
        self._restart_task = asyncio.create_task(self._restart(dead))

    async def _restart(self, dead: _Worker) -> None:
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
    """Kill a worker no _Worker watches; multiprocessing reaps it on its next start or at exit."""
    with contextlib.suppress(Exception):
        proc.kill()


if TYPE_CHECKING:

    def _is_a_replica(replica: LocalReplica) -> Replica:
        return replica

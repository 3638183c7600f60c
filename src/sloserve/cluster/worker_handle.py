"""WorkerHandle: the parent's side of one worker process, one generation of a LocalReplica.

It owns the process, its pipe, the shared memory slots (:mod:`sloserve.cluster.shm`)
and the batches in flight. The event loop never blocks on the worker: replies and
the worker's exit are watched with ``loop.add_reader`` on the pipe and on the
process sentinel. When the worker dies, every batch in flight fails with
``ReplicaDiedError``, its slots are unlinked, and the owner's ``on_death`` is
called (:class:`~sloserve.cluster.local.LocalReplica` then starts a new worker).

Cancelling a batch (:meth:`WorkerHandle.cancel`) tells the worker to drop it if
it has not started; the returned future resolves once the worker has dropped or
answered it (or died), so the slot stays busy exactly as long as the worker is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from sloserve.cluster import shm
from sloserve.errors import (
    InternalError,
    ReplicaDiedError,
    SloserveError,
    UnavailableError,
    error_from_code,
)
from sloserve.replica import Arrays, ReplicaOutputs
from sloserve.types import ReplicaId

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]


@dataclass(slots=True)
class _Call:
    future: asyncio.Future[Outputs]
    slot: int
    rows: int
    seq: int
    settled: asyncio.Future[None] | None = None
    """Created by a cancel: resolved when the worker has answered or dropped the batch, or died."""


class WorkerHandle:
    """One worker process with its pipe and slots: one generation of a LocalReplica.

    Dies once. Everything it owns (process, pipe, slots, waiting callers) is
    released by :meth:`_die` or :meth:`shutdown`.
    """

    def __init__(
        self,
        replica_id: ReplicaId,
        proc: BaseProcess,
        conn: Connection,
        on_death: Callable[[WorkerHandle], None],
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
        future: asyncio.Future[Outputs] = self._loop.create_future()
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
            result: Outputs | SloserveError
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

    def _read_outputs(self, call: _Call, msg: shm.RunReply) -> Outputs:
        assert self._slots is not None
        nbytes = sum(shm.align(ref.nbytes) for ref in msg.outputs)
        if call.rows > 0:
            self._out_row_bytes = max(self._out_row_bytes, -(-nbytes // call.rows))
        segment = self._slots.segment(call.slot)
        # Copies: the slot is reused by the next batch.
        outputs = ReplicaOutputs(shm.read(segment.buf, msg.outputs, copy=True, inline=msg.inline))
        outputs.done_at = msg.done_at or None
        return outputs

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


def _ignore_death(worker: WorkerHandle) -> None:
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

"""The main loop of a worker process: one ONNX Runtime session serving batches.

:class:`~sloserve.cluster.local.LocalReplica` spawns :func:`main` in a fresh
interpreter. The worker ignores SIGINT (the parent owns shutdown), pins the
numeric libraries to one thread before importing them, loads the model and
reports :class:`~sloserve.cluster.shm.Ready` or
:class:`~sloserve.cluster.shm.LoadFailed`. It then answers run requests one at a
time, in the order they arrive, until it reads a shutdown message or the
parent's end of the pipe closes. A model error becomes a ``(code, message)``
reply and the worker keeps serving.

Before it starts a batch the worker reads every message already waiting on the
pipe (one ``poll`` syscall when there is none), so a
:class:`~sloserve.cluster.shm.Cancel` for a batch still queued behind the current
one drops it (answered :class:`~sloserve.cluster.shm.Dropped`). Injected faults
(:mod:`sloserve.cluster.faults`), when given, apply just before a batch starts.

This module imports only the standard library at the top: the spawned child
imports it to find :func:`main`, and numpy must not load before the thread
limits are in the environment.
"""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from sloserve.cluster.faults import FaultSpec
    from sloserve.cluster.shm import Message, RunReply, RunRequest
    from sloserve.runtime.session import OnnxSession

THREAD_ENV_VARS: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
"""Set to 1 in the worker: ONNX Runtime has its own pool, sized by ``intra_op_threads``."""


def main(conn: Connection, model_path: str, intra_op_threads: int, faults: FaultSpec | None = None) -> None:
    """Entry point of the worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in THREAD_ENV_VARS:
        os.environ[var] = "1"

    from sloserve.cluster import shm
    from sloserve.errors import InternalError, SloserveError

    try:
        from sloserve.runtime.session import OnnxSession

        session = OnnxSession(Path(model_path), intra_op_threads=intra_op_threads)
    except SloserveError as exc:
        conn.send_bytes(shm.encode(shm.LoadFailed(*exc.to_wire())))
        return
    except Exception as exc:
        error = InternalError(f"loading {model_path} failed: {type(exc).__name__}: {exc}")
        conn.send_bytes(shm.encode(shm.LoadFailed(*error.to_wire())))
        return
    gc.collect()
    gc.freeze()  # the runtime and the model stay for the worker's life: no full collection walks them
    conn.send_bytes(shm.encode(shm.Ready(session.inputs, session.outputs)))
    _serve(conn, session, faults)


def _serve(conn: Connection, session: OnnxSession, faults: FaultSpec | None = None) -> None:
    """Answer run requests in order until told to stop or the parent goes away."""
    import select
    import time
    from collections import deque

    from sloserve.cluster import shm
    from sloserve.cluster.faults import FaultInjector
    from sloserve.errors import InternalError, SloserveError

    slots = shm.AttachedSlots()
    injector = FaultInjector(faults) if faults is not None and faults.active else None
    queue: deque[RunRequest] = deque()
    waiting = select.poll()
    waiting.register(conn.fileno(), select.POLLIN)
    stopping = False

    def run(req: RunRequest) -> RunReply:
        try:
            buf = slots.buffer(req.slot, req.segment)
            inputs = shm.read(buf, req.inputs, copy=False)
            try:
                outputs = session.run(inputs, req.output_names)
            finally:
                del inputs  # views of the slot: drop them before it may be remapped
            packed = shm.pack(outputs.items(), req.output_offset)
            if packed.end <= len(buf):
                shm.write(buf, packed)
                return shm.RunReply(req.seq, packed.refs, (), None)
            # Too big for the slot: send them in the reply; the parent grows the slot.
            refs = tuple(ref._replace(offset=shm.INLINE) for ref in packed.refs)
            return shm.RunReply(req.seq, refs, tuple(outputs.values()), None)
        except SloserveError as exc:
            return shm.RunReply(req.seq, (), (), exc.to_wire())
        except Exception as exc:
            error = InternalError(f"worker failed to run a batch: {type(exc).__name__}: {exc}")
            return shm.RunReply(req.seq, (), (), error.to_wire())

    def take(msg: Message) -> None:
        nonlocal stopping
        if isinstance(msg, shm.RunRequest):
            queue.append(msg)
        elif isinstance(msg, shm.Cancel):
            for index, queued in enumerate(queue):
                if queued.seq == msg.seq:
                    del queue[index]
                    conn.send_bytes(shm.encode(shm.Dropped(msg.seq)))
                    break
        elif isinstance(msg, shm.Shutdown):
            stopping = True  # answer what is queued, then exit

    try:
        while True:
            if not queue:
                if stopping:
                    return
                take(shm.decode(conn.recv_bytes()))
            while not stopping and waiting.poll(0):
                take(shm.decode(conn.recv_bytes()))
            if not queue:
                continue
            request = queue.popleft()
            if injector is not None:
                injector.before_batch()
            reply = run(request)
            conn.send_bytes(shm.encode(reply._replace(done_at=time.monotonic())))
    except (EOFError, OSError):
        return  # the parent is gone
    finally:
        slots.close()
        conn.close()

"""What runs inside each replica actor: one ONNX Runtime session, and the leases of its front ends.

Ray creates :class:`ReplicaActor` from the model's bytes (shipped through the
object store) and an :class:`ActorInit`. The actor writes the bytes to a private
temporary file, loads it with :class:`~sloserve.runtime.session.OnnxSession`, and
deletes the file. A model that fails to load does not kill the actor: the
failure is kept and reported, as a ``(code, message)`` pair, by :meth:`attach`.

Batches run one at a time, in the order they arrive (``max_concurrency=1``); the
control methods (attach, heartbeat, detach, drop, describe) run in their own
concurrency group, so they are answered while a batch computes. ``drop`` marks a
queued batch that its front end no longer wants (a hedged twin answered first);
``run`` then answers ``("dropped",)`` without computing it. Results cross
the process boundary as tuples of builtins: ``("ok", outputs)`` or
``("error", code, message)``, never as pickled exceptions.

Leases. The actor is *detached* (it outlives the front end that created it) and
named, so several front ends share it. Each front end that uses it holds a lease,
renewed by its heartbeat; :meth:`detach` returns how many leases remain and the
front end that sees zero kills the actor. A reaper thread ends an actor whose
leases have all expired (every front end that used it died without detaching),
so nothing leaks.

This module imports no ML library and no Ray at module level: the front end
imports it to hand the class to Ray, and unit tests run it without either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sloserve.errors import InternalError, SloserveError

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
RunReply = tuple[Any, ...]
"""``("ok", {name: array})``, ``("error", code, message)`` or ``("dropped",)``."""

_DROPPED_KEPT = 4096


@dataclass(frozen=True, slots=True)
class ActorInit:
    """Everything an actor needs besides the model's bytes."""

    model: str
    version: str
    index: int
    digest: str
    """sha256 of the model's bytes: a front end attaches only to an actor serving the same model."""
    intra_op_threads: int
    frontend: str
    """The front end that creates it (its first lease)."""
    lease_ttl_s: float
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    sloserve_version: str = ""


class Session(Protocol):
    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> dict[str, Array]: ...


def load_onnx(model: bytes, intra_op_threads: int) -> Session:
    """An OnnxSession from the model's bytes, through a private temporary file."""
    from sloserve.runtime.session import OnnxSession

    fd, name = tempfile.mkstemp(prefix="sloserve-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(model)
        return OnnxSession(Path(name), intra_op_threads=intra_op_threads)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _ray_node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""


def _exit_ray_actor() -> None:
    """End this actor from its reaper thread (``exit_actor`` works only in a method's thread)."""
    try:
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
    except Exception:
        os._exit(0)


class ReplicaActor:
    """One replica's model inside a Ray actor (see the module docstring)."""

    def __init__(
        self,
        model: bytes,
        init: ActorInit,
        *,
        load: Callable[[bytes, int], Session] = load_onnx,
        clock: Callable[[], float] = time.monotonic,
        node_id: Callable[[], str] = _ray_node_id,
        exit_actor: Callable[[], None] = _exit_ray_actor,
        reap: bool = True,
    ) -> None:
        self._init = init
        self._clock = clock
        self._node_id = node_id
        self._exit_actor = exit_actor
        self._lock = threading.Lock()
        self._leases: dict[str, float] = {init.frontend: clock() + init.lease_ttl_s}
        self._closing = False
        self._batches = 0
        self._rows = 0
        self._started = time.time()
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._session: Session | None = None
        self._load_error: tuple[str, str] | None = None
        try:
            self._session = load(model, init.intra_op_threads)
        except SloserveError as exc:
            self._load_error = exc.to_wire()
        except Exception as exc:
            self._load_error = InternalError(f"loading the model failed: {type(exc).__name__}: {exc}").to_wire()
        self._reaper: threading.Thread | None = None
        if reap:
            self._reaper = threading.Thread(target=self._reap_forever, name="sloserve-lease-reaper", daemon=True)
            self._reaper.start()

    # ------------------------------------------------------------ control group

    def attach(self, frontend: str, digest: str) -> dict[str, Any]:
        """Take a lease for ``frontend``. ``status``: ok, closing (its last front end left: make a
        new one), mismatch (it serves another model) or load_failed (``error`` says why)."""
        with self._lock:
            if self._closing:
                return {"status": "closing"}
            if digest != self._init.digest:
                return {"status": "mismatch", "digest": self._init.digest}
            if self._load_error is not None:
                return {"status": "load_failed", "error": self._load_error}
            self._leases[frontend] = self._clock() + self._init.lease_ttl_s
        return {"status": "ok", "info": self.describe()}

    def heartbeat(self, frontend: str) -> bool:
        """Renew ``frontend``'s lease; False if it holds none (it expired, or the actor is closing)."""
        with self._lock:
            if self._closing or frontend not in self._leases:
                return False
            self._leases[frontend] = self._clock() + self._init.lease_ttl_s
            return True

    def detach(self, frontend: str) -> int:
        """Drop ``frontend``'s lease; returns how many remain (at zero the actor refuses new leases)."""
        with self._lock:
            self._leases.pop(frontend, None)
            self._expire()
            if not self._leases:
                self._closing = True
            return len(self._leases)

    def drop(self, batch: str) -> None:
        """Do not run ``batch`` if it has not started (its front end no longer wants it: a hedged twin won).
        Remembers the last few thousand ids; a drop for a batch already run is forgotten with them."""
        with self._lock:
            self._dropped[batch] = None
            while len(self._dropped) > _DROPPED_KEPT:
                self._dropped.popitem(last=False)

    def describe(self) -> dict[str, Any]:
        init = self._init
        with self._lock:
            frontends = sorted(self._leases)
            closing = self._closing
        return {
            "model": init.model,
            "version": init.version,
            "index": init.index,
            "digest": init.digest,
            "node_id": self._node_id(),
            "pid": os.getpid(),
            "num_cpus": init.num_cpus,
            "num_gpus": init.num_gpus,
            "frontends": frontends,
            "closing": closing,
            "batches": self._batches,
            "rows": self._rows,
            "started_at": self._started,
            "sloserve_version": init.sloserve_version,
            "load_error": self._load_error,
        }

    # ------------------------------------------------------------ batches

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str], batch: str = "") -> RunReply:
        if batch:
            with self._lock:
                if batch in self._dropped:
                    del self._dropped[batch]
                    return ("dropped",)
        session = self._session
        if session is None:
            code, message = self._load_error or InternalError("the model is not loaded").to_wire()
            return ("error", code, message)
        try:
            outputs = session.run(inputs, tuple(output_names))
        except SloserveError as exc:
            return ("error", *exc.to_wire())
        except Exception as exc:
            return ("error", *InternalError(f"the actor failed to run a batch: {type(exc).__name__}: {exc}").to_wire())
        self._batches += 1
        for array in inputs.values():
            self._rows += int(array.shape[0]) if array.ndim else 1
            break
        return ("ok", outputs)

    # ------------------------------------------------------------ leases

    def _expire(self) -> None:
        now = self._clock()
        for frontend in [f for f, until in self._leases.items() if until <= now]:
            del self._leases[frontend]
            log.warning("replica actor %s/%s/%d: lease of front end %s expired", *self._name(), frontend)

    def _name(self) -> tuple[str, str, int]:
        return self._init.model, self._init.version, self._init.index

    def reap_once(self) -> bool:
        """Drop expired leases; end the actor if none is left. True when it ended."""
        with self._lock:
            self._expire()
            if self._leases:
                return False
            self._closing = True
        log.warning("replica actor %s/%s/%d: no front end holds a lease; exiting", *self._name())
        self._exit_actor()
        return True

    def _reap_forever(self) -> None:
        period = min(1.0, max(0.05, self._init.lease_ttl_s / 4))
        while True:
            time.sleep(period)
            if self.reap_once():
                return

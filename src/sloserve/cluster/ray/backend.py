"""The one seam between sloserve and Ray.

:class:`RayBackend` is everything sloserve asks of Ray: connect, find or create a
named actor, call one of its methods, kill it, read the cluster's nodes and
resources. :class:`CoreRayBackend` implements it with Ray's core API and is the
only code in sloserve that imports ``ray`` (inside its methods, so importing this
module costs nothing); :class:`~sloserve.cluster.ray.fake.FakeRayBackend` is the
in-memory twin the unit tests use.

The event loop never waits on Ray. Anything that talks to the GCS or copies a
model (``ray.init``, ``ray.put``, actor creation, ``ray.get_actor``, ``ray.kill``,
``ray.nodes``) runs in a daemon thread (:func:`_off_loop`), so a call stuck on a
GCS that went away is abandoned, never waited for. The request path only
*submits* a method call (``actor.run.remote``, which serializes the batch and
returns; a batch over 100 KiB is first copied into the node's object store) and
gets its answer through a future that Ray's own thread completes with
``call_soon_threadsafe``, the same way ``await object_ref`` works.

Ray's exceptions never leave this module: a call fails with :class:`ActorGoneError`
(the actor is dead for good), :class:`ActorUnreachableError` (no answer now:
network, node or cluster trouble), :class:`ActorMethodError` (the method raised:
a bug) or :class:`CallCancelledError`.

Ray drivers are per process: every :class:`CoreRayBackend` in one process shares
the one ``ray.init`` connection, counted, and the last ``disconnect`` shuts it
down. Run one front end per process.

A driver also depends on this machine's raylet, whose object store every
``ray.put`` (and every batch over 100 KiB) goes through: once that raylet is
gone, Ray ends the whole process on the next such call ("the connection to the
plasma store is failed. Terminate the process."). So on connecting, the backend
finds the raylet's process from its object store socket and watches it (a
pidfd, Linux); once it has exited, every call fails with
:class:`ActorUnreachableError` without touching Ray and :meth:`CoreRayBackend.reachable`
says no, so the cluster is lost and the connection shut down, as when the GCS
goes (:mod:`~sloserve.cluster.ray.cluster`). A batch already in flight when the
raylet dies can still take the process with it; nothing on this side can stop that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from sloserve.cluster.ray.actor import ActorInit, ReplicaActor
from sloserve.errors import UnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

RAY_NAMESPACE: Final = "sloserve"
"""Every sloserve actor lives in this Ray namespace, so front ends find each other's replicas by name."""

CONTROL_GROUP: Final = "control"
"""Concurrency group of the actor's control methods (attach, heartbeat, detach, describe): they are
answered while a batch runs, so a long batch never looks like a dead actor."""


class BackendError(Exception):
    """A Ray call failed; ``message`` says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ActorGoneError(BackendError):
    """The actor is dead (killed, crashed, its node lost): it will never answer again."""


class ActorUnreachableError(BackendError):
    """The actor did not answer now (network, node or cluster trouble); it may still be alive."""


class ActorMethodError(BackendError):
    """The actor's method raised: a bug in the actor code, not a model error."""


class CallCancelledError(BackendError):
    """The call was cancelled before the actor ran it."""


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """A named actor to find or create: where it lives, what it may use, how it starts."""

    name: str
    namespace: str
    num_cpus: float
    num_gpus: float
    init: ActorInit


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    resources: Mapping[str, float] = field(default_factory=dict)
    """Total resources of the node (CPU, GPU, memory, object_store_memory, custom)."""


class Call(Protocol):
    """One submitted method call.

    There is no ``cancel``: sloserve never uses ``ray.cancel`` on actor tasks, because cancelling a
    queued actor task can leave the tasks queued behind it stuck for good (ray-project/ray#60850,
    #66020). A batch nobody wants any more is dropped by the actor itself (``ReplicaActor.drop``).
    """

    @property
    def result(self) -> asyncio.Future[Any]:
        """Resolves with the method's return value or fails with a :class:`BackendError`. The
        caller may fail it first (the actor died, the cluster was lost); a late answer is then dropped."""
        ...


class RayBackend(Protocol):
    @property
    def address(self) -> str: ...

    async def reachable(self, timeout_s: float) -> bool:
        """Whether the cluster's GCS accepts connections now (no Ray call: safe while disconnected)."""
        ...

    async def connect(self, namespace: str) -> None:
        """Connect this process to the cluster; raises UnavailableError."""
        ...

    async def disconnect(self) -> None: ...

    async def find_actor(self, name: str, namespace: str) -> object | None:
        """The named actor's handle, or None if there is none."""
        ...

    async def create_actor(self, spec: ActorSpec, model: bytes) -> object:
        """Put ``model`` in the object store and create the named actor from it, or return the
        actor of that name if one exists (it is not replaced). Returns at once: the actor may still
        be waiting for resources or loading its model."""
        ...

    def call(self, actor: object, method: str, *args: Any, control: bool = False) -> Call:
        """Submit ``actor.method(*args)`` without waiting; ``control`` runs it in the control group."""
        ...

    async def kill(self, actor: object) -> None:
        """Kill the actor (its name is freed); quiet if it is already gone."""
        ...

    async def nodes(self) -> list[NodeInfo]: ...

    async def resources(self) -> tuple[dict[str, float], dict[str, float]]:
        """The cluster's total and available resources."""
        ...

    async def actor_names(self, namespace: str) -> list[str]:
        """Names of the live named actors in ``namespace``."""
        ...


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` address, else None (``auto``, ``ray://...``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


async def tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# ---------------------------------------------------------------- Ray core API

_driver_lock = threading.Lock()
_driver_users = 0
_local_raylet: int | None = None
"""A pidfd of this machine's raylet while connected; None before, after, or where it cannot be watched."""


def _watch_local_raylet(ray: Any) -> int | None:
    """A pidfd of the process serving this driver's object store socket (the raylet), or None."""
    try:
        path = ray._private.worker.global_worker.node.plasma_store_socket_name
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(path)
            credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", credentials)[0]
        return os.pidfd_open(pid)
    except (AttributeError, OSError, TypeError) as exc:  # not Linux, or Ray's internals moved
        log.info("not watching this machine's raylet (%s): a Ray call after it dies may end this process", exc)
        return None


def _reinstall_signal_handlers() -> None:
    """``ray.shutdown`` sets SIGTERM back to the default action underneath Python (which still lists the
    server's handler): a front end that lost its cluster would then die on SIGTERM instead of draining.
    Installing Python's handlers again puts them back (only the main thread may: elsewhere nothing to do)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(number)
        if handler is not None:
            signal.signal(number, handler)


def local_raylet_gone() -> bool:
    """True once the watched raylet has exited (its pidfd reads ready; ``poll``, as a server with many
    connections can hold the pidfd above ``select``'s 1024)."""
    watched = _local_raylet
    if watched is None:
        return False
    poller = select.poll()
    poller.register(watched, select.POLLIN)
    return bool(poller.poll(0))


async def _off_loop(work: Callable[[], T]) -> T:
    """Run a blocking Ray call in a daemon thread and await its result.

    Not ``asyncio.to_thread``: a Ray call can stay stuck for good on a GCS that went away, and the default
    executor's threads are joined when the interpreter exits, so one stuck call would keep the process from
    ever exiting. A daemon thread is abandoned instead (the caller's own timeout gives up on it).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    future.add_done_callback(_retrieve)

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value: Any = work()
            error: BaseException | None = None
        except BaseException as exc:
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="sloserve-ray-call", daemon=True).start()
    return await future


def _driver() -> Any:
    """``ray``, connected. Never lets a call start a local cluster of its own (Ray's auto-init)."""
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # read when ray is first imported
    import ray

    if not ray.is_initialized():
        raise ActorUnreachableError("not connected to the Ray cluster")
    if local_raylet_gone():
        raise ActorUnreachableError("this machine's Ray node (its raylet and object store) is gone")
    return ray


class _RayCall:
    __slots__ = ("_loop", "_ref", "result")

    def __init__(self, ref: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ref = ref
        self.result: asyncio.Future[Any] = loop.create_future()
        self.result.add_done_callback(_retrieve)  # a failed call nobody waits for any more is no error
        ref.future().add_done_callback(self._done)  # called on a Ray thread

    def _done(self, done: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._settle, done)

    def _settle(self, done: Any) -> None:
        if self.result.done():
            return
        if done.cancelled():
            self.result.set_exception(CallCancelledError("the call was cancelled"))
            return
        error = done.exception()
        if error is None:
            self.result.set_result(done.result())
        else:
            self.result.set_exception(_translate(error))


def _translate(error: BaseException) -> BackendError:
    from ray import exceptions as rx

    text = " ".join(str(error).split())[:500]
    if isinstance(error, rx.ActorUnavailableError):
        return ActorUnreachableError(text)
    if isinstance(error, rx.RayActorError):
        return ActorGoneError(text)
    if isinstance(error, rx.TaskCancelledError):
        return CallCancelledError(text)
    if isinstance(error, rx.RayTaskError):
        return ActorMethodError(text)
    return ActorUnreachableError(f"{type(error).__name__}: {text}")


class CoreRayBackend:
    """:class:`RayBackend` over Ray's core API, connected to the cluster at ``address``."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._gcs = split_address(address)
        self._connected = False
        self._actor_class: Any = None

    @property
    def address(self) -> str:
        return self._address

    async def reachable(self, timeout_s: float) -> bool:
        if self._connected and local_raylet_gone():
            return False
        if self._gcs is None:
            return True  # an address we cannot probe ("auto"): the calls themselves tell
        return await tcp_reachable(*self._gcs, timeout_s)

    async def connect(self, namespace: str) -> None:
        if self._connected:
            return
        try:
            await _off_loop(lambda: self._init(namespace))
        except ImportError:
            raise UnavailableError(
                "--ray-address needs Ray: pip install 'sloserve[ray]' (on the front end and every node)"
            ) from None
        except Exception as exc:
            raise UnavailableError(f"cannot connect to the Ray cluster at {self._address}: {exc}") from None
        self._connected = True

    def _init(self, namespace: str) -> None:
        global _driver_users, _local_raylet
        os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
        import ray

        with _driver_lock:
            if not ray.is_initialized():
                ray.init(
                    address=self._address,
                    namespace=namespace,
                    log_to_driver=False,
                    configure_logging=False,
                )
                gcs = split_address(ray.get_runtime_context().gcs_address)
                if gcs is not None:
                    self._gcs = gcs
                _local_raylet = _watch_local_raylet(ray)
            _driver_users += 1

    async def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        await _off_loop(self._shutdown)
        _reinstall_signal_handlers()

    @staticmethod
    def _shutdown() -> None:
        global _driver_users, _local_raylet
        import ray

        with _driver_lock:
            _driver_users = max(0, _driver_users - 1)
            if _driver_users == 0:
                if ray.is_initialized():
                    ray.shutdown()
                if _local_raylet is not None:
                    os.close(_local_raylet)
                    _local_raylet = None

    async def find_actor(self, name: str, namespace: str) -> object | None:
        def find() -> object | None:
            ray = _driver()

            try:
                handle: object = ray.get_actor(name, namespace=namespace)
            except ValueError:
                return None
            return handle

        try:
            return await _off_loop(find)
        except Exception as exc:
            raise ActorUnreachableError(f"looking up actor {namespace}/{name} failed: {exc}") from None

    async def create_actor(self, spec: ActorSpec, model: bytes) -> object:
        def create() -> object:
            ray = _driver()

            if self._actor_class is None:
                self._actor_class = ray.remote(concurrency_groups={CONTROL_GROUP: 1})(ReplicaActor)
            model_ref = ray.put(model)  # the creation task holds it until the actor has loaded it
            handle: object = self._actor_class.options(
                name=spec.name,
                namespace=spec.namespace,
                get_if_exists=True,
                lifetime="detached",
                num_cpus=spec.num_cpus,
                num_gpus=spec.num_gpus,
                max_restarts=0,
                max_concurrency=1,
            ).remote(model_ref, spec.init)
            return handle

        try:
            return await _off_loop(create)
        except Exception as exc:
            raise ActorUnreachableError(f"creating actor {spec.namespace}/{spec.name} failed: {exc}") from None

    def call(self, actor: object, method: str, *args: Any, control: bool = False) -> Call:
        _driver()
        bound: Any = getattr(actor, method)
        if control:
            bound = bound.options(concurrency_group=CONTROL_GROUP)
        try:
            ref = bound.remote(*args)
        except Exception as exc:  # submitting failed: Ray is shut down or the handle is stale
            raise ActorUnreachableError(f"could not submit {method}: {exc}") from None
        return _RayCall(ref, asyncio.get_running_loop())

    async def kill(self, actor: object) -> None:
        def kill() -> None:
            ray = _driver()

            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

        await _off_loop(kill)

    async def nodes(self) -> list[NodeInfo]:
        def nodes() -> list[NodeInfo]:
            ray = _driver()

            return [
                NodeInfo(
                    str(n.get("NodeID", "")),
                    f"{n.get('NodeManagerAddress', '')}:{n.get('NodeManagerPort', '')}",
                    bool(n.get("Alive", False)),
                    {k: float(v) for k, v in dict(n.get("Resources") or {}).items()},
                )
                for n in ray.nodes()
            ]

        return await _off_loop(nodes)

    async def resources(self) -> tuple[dict[str, float], dict[str, float]]:
        def resources() -> tuple[dict[str, float], dict[str, float]]:
            ray = _driver()

            return dict(ray.cluster_resources()), dict(ray.available_resources())

        return await _off_loop(resources)

    async def actor_names(self, namespace: str) -> list[str]:
        def names() -> list[str]:
            ray = _driver()

            return sorted(
                str(a["name"])
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a.get("namespace") == namespace
            )

        return await _off_loop(names)


if TYPE_CHECKING:

    def _is_a_backend(backend: CoreRayBackend) -> RayBackend:
        return backend


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

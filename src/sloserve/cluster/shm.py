"""Shared memory tensor transport between the server and its worker processes.

Every in-flight batch owns one *slot*: a shared memory segment that the parent
creates, reuses and unlinks. The parent copies the input tensors into the slot and
sends the worker a small control message (:class:`RunRequest`: sequence number,
slot, segment name and, per tensor, dtype, shape, offset and size) over a pipe.
The worker maps the slot, hands zero-copy views to ONNX Runtime, writes the
outputs after the inputs and answers with a :class:`RunReply` that describes
them; the parent copies them out before the slot is reused. A :class:`Cancel`
for a batch the worker has not started makes it answer :class:`Dropped` instead
(a hedged batch whose twin already won); a started batch is answered as usual
and the parent discards its outputs.

Slot layout, every tensor starting on a 64-byte boundary::

    0 ─ input 0 ─ input 1 ─ ... ─ output_offset ─ output 0 ─ output 1 ─ ... ─ size

BYTES (object) tensors are stored as pickled bytes. Outputs that do not fit in
the slot travel inline in the reply instead, and the parent learns the output
size per row and grows the slot before the next batch.

Control messages travel as plain tuples of builtins, tag first: pickling such a
tuple costs about 1 µs, a NamedTuple or dataclass five to seven times more.
:func:`encode` and :func:`decode` convert between the typed messages and bytes.
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import secrets
from collections.abc import Iterable, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Final, NamedTuple

import numpy as np

from sloserve.datatypes import element_size
from sloserve.errors import InternalError, InvalidArgumentError
from sloserve.model_config import TensorSpec

Array = np.ndarray[Any, Any]

ALIGN: Final = 64
"""Every tensor in a slot starts on a multiple of this many bytes."""

PICKLED: Final = "pickle"
"""``TensorRef.dtype`` of an object tensor stored as pickled bytes."""

INLINE: Final = -1
"""``TensorRef.offset`` of an output carried inline in the reply, not in the slot."""

MIN_SLOT_BYTES: Final = 64 * 1024
_PAGE: Final = mmap.PAGESIZE
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


def align(n: int) -> int:
    """Round ``n`` up to the next multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ---------------------------------------------------------------- control messages


class TensorRef(NamedTuple):
    """Where one tensor lies in a slot."""

    name: str
    dtype: str  # numpy ``dtype.str`` ("<f4"), or PICKLED
    shape: tuple[int, ...]
    offset: int  # INLINE for an output carried in the reply
    nbytes: int


class RunRequest(NamedTuple):
    """Parent to worker: run the batch whose inputs lie in ``slot``."""

    seq: int
    slot: int
    segment: str  # the slot's current shared memory name (it changes when the slot grows)
    inputs: tuple[TensorRef, ...]
    output_offset: int  # where the worker may start writing outputs
    output_names: tuple[str, ...]


class RunReply(NamedTuple):
    """Worker to parent: the outputs of batch ``seq``, or the error it raised."""

    seq: int
    outputs: tuple[TensorRef, ...]
    inline: tuple[Array, ...]  # the outputs whose ref has offset INLINE, in order
    error: tuple[str, str] | None  # (code, message), see SloserveError.to_wire
    done_at: float = 0.0  # time.monotonic() in the worker as it sends the reply (one clock for all processes)


class Ready(NamedTuple):
    """Worker to parent: the model is loaded; this is its signature."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class LoadFailed(NamedTuple):
    """Worker to parent, then the worker exits: the model could not be loaded."""

    code: str
    message: str


class Shutdown(NamedTuple):
    """Parent to worker: finish and exit."""


class Cancel(NamedTuple):
    """Parent to worker: drop batch ``seq`` if it has not started (else it runs and is answered as usual)."""

    seq: int


class Dropped(NamedTuple):
    """Worker to parent: batch ``seq`` was cancelled before it started; its slot is free."""

    seq: int


Message = RunRequest | RunReply | Ready | LoadFailed | Shutdown | Cancel | Dropped

_RUN, _REPLY, _READY, _LOAD_FAILED, _SHUTDOWN, _CANCEL, _DROPPED = range(7)


def _specs_to_wire(specs: Sequence[TensorSpec]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    return tuple((s.name, s.datatype, s.shape) for s in specs)


def _specs_from_wire(raw: Sequence[tuple[str, str, tuple[int, ...]]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, datatype, tuple(shape)) for name, datatype, shape in raw)


def encode(msg: Message) -> bytes:
    """A message as the bytes sent on the pipe (builtins only, no sloserve classes)."""
    wire: tuple[Any, ...]
    if isinstance(msg, RunRequest):
        inputs = tuple(tuple(r) for r in msg.inputs)
        wire = (_RUN, msg.seq, msg.slot, msg.segment, inputs, msg.output_offset, msg.output_names)
    elif isinstance(msg, RunReply):
        wire = (_REPLY, msg.seq, tuple(tuple(r) for r in msg.outputs), msg.inline, msg.error, msg.done_at)
    elif isinstance(msg, Ready):
        wire = (_READY, _specs_to_wire(msg.inputs), _specs_to_wire(msg.outputs))
    elif isinstance(msg, LoadFailed):
        wire = (_LOAD_FAILED, msg.code, msg.message)
    elif isinstance(msg, Cancel):
        wire = (_CANCEL, msg.seq)
    elif isinstance(msg, Dropped):
        wire = (_DROPPED, msg.seq)
    else:
        wire = (_SHUTDOWN,)
    return pickle.dumps(wire, protocol=_PROTOCOL)


def decode(data: bytes) -> Message:
    """The inverse of :func:`encode`; raises InternalError on anything else."""
    try:
        wire = pickle.loads(data)
        tag = wire[0]
        if tag == _RUN:
            _, seq, slot, segment, inputs, output_offset, output_names = wire
            refs = tuple(TensorRef._make(r) for r in inputs)
            return RunRequest(seq, slot, segment, refs, output_offset, tuple(output_names))
        if tag == _REPLY:
            _, seq, outputs, inline, error, done_at = wire
            return RunReply(seq, tuple(TensorRef._make(r) for r in outputs), tuple(inline), error, float(done_at))
        if tag == _READY:
            return Ready(_specs_from_wire(wire[1]), _specs_from_wire(wire[2]))
        if tag == _LOAD_FAILED:
            return LoadFailed(wire[1], wire[2])
        if tag == _SHUTDOWN:
            return Shutdown()
        if tag == _CANCEL:
            return Cancel(int(wire[1]))
        if tag == _DROPPED:
            return Dropped(int(wire[1]))
    except Exception as exc:
        raise InternalError(f"malformed worker message: {type(exc).__name__}: {exc}") from None
    raise InternalError(f"malformed worker message: unknown tag {tag!r}")


# ---------------------------------------------------------------- slot layout


class Packed(NamedTuple):
    """Tensors laid out for a slot: their refs, the end offset, and what to copy."""

    refs: tuple[TensorRef, ...]
    end: int  # aligned offset just past the last tensor
    data: tuple[Array | bytes, ...]  # per ref: the array, or the pickled bytes of an object array


def pack(tensors: Iterable[tuple[str, Any]], start: int = 0) -> Packed:
    """Lay ``tensors`` out one after another from ``start`` (pure: copies nothing yet)."""
    refs: list[TensorRef] = []
    data: list[Array | bytes] = []
    offset = align(start)
    for name, value in tensors:
        if type(value) is np.ndarray:
            array: Array = value
        else:
            try:
                array = np.asarray(value)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(f"tensor {name!r} is not an array: {exc}") from None
        if array.dtype.hasobject:
            payload = pickle.dumps(array, protocol=_PROTOCOL)
            refs.append(TensorRef(name, PICKLED, array.shape, offset, len(payload)))
            data.append(payload)
            offset = align(offset + len(payload))
        else:
            refs.append(TensorRef(name, array.dtype.str, array.shape, offset, array.nbytes))
            data.append(array)
            offset = align(offset + array.nbytes)
    return Packed(tuple(refs), offset, tuple(data))


def write(buf: memoryview, packed: Packed) -> None:
    """Copy packed tensors into ``buf`` at their offsets (one copy per tensor)."""
    if packed.end > len(buf):
        raise InternalError(f"slot of {len(buf)} bytes cannot hold {packed.end} bytes of tensors")
    for ref, item in zip(packed.refs, packed.data, strict=True):
        if isinstance(item, bytes):
            buf[ref.offset : ref.offset + ref.nbytes] = item
        elif not ref.nbytes:
            continue
        elif item.flags.c_contiguous:
            buf[ref.offset : ref.offset + ref.nbytes] = memoryview(item).cast("B")  # type: ignore[arg-type]
        else:
            target: Array = np.ndarray(ref.shape, item.dtype, buffer=buf, offset=ref.offset)
            np.copyto(target, item, casting="no")


def read(buf: memoryview, refs: Iterable[TensorRef], *, copy: bool, inline: Sequence[Array] = ()) -> dict[str, Array]:
    """The tensors ``refs`` describe, as copies (``copy=True``) or as views of ``buf``.

    Views alias the slot: only the worker, which is done with them before the slot
    is reused, may ask for them.
    """
    out: dict[str, Array] = {}
    pending_inline = iter(inline)
    for ref in refs:
        if ref.offset == INLINE:
            out[ref.name] = next(pending_inline)
            continue
        if ref.offset < 0 or ref.offset + ref.nbytes > len(buf):
            raise InternalError(
                f"tensor {ref.name!r} at {ref.offset}+{ref.nbytes} lies outside its {len(buf)}-byte slot"
            )
        if ref.dtype == PICKLED:
            with buf[ref.offset : ref.offset + ref.nbytes] as raw:
                out[ref.name] = pickle.loads(raw)
        else:
            dtype = _dtype(ref.dtype)
            if ref.nbytes == 0:
                out[ref.name] = np.empty(ref.shape, dtype)
                continue
            view = np.frombuffer(buf, dtype, ref.nbytes // dtype.itemsize, ref.offset).reshape(ref.shape)
            out[ref.name] = view.copy() if copy else view
    return out


_DTYPES: dict[str, np.dtype[Any]] = {}


def _dtype(text: str) -> np.dtype[Any]:
    dtype = _DTYPES.get(text)
    if dtype is None:
        dtype = _DTYPES[text] = np.dtype(text)
    return dtype


def batch_rows(refs: Sequence[TensorRef]) -> int:
    """Rows in a batch: the first dimension of its first tensor (1 for a scalar)."""
    return refs[0].shape[0] if refs and refs[0].shape else 1


def row_nbytes(specs: Iterable[TensorSpec]) -> int:
    """Bytes per batch row of the fixed-size tensors whose non-batch dimensions are known.

    BYTES tensors and tensors with a variable non-batch dimension count as 0: the
    parent learns their size from replies.
    """
    total = 0
    for spec in specs:
        dims = spec.shape[1:]
        if spec.datatype == "BYTES" or any(d < 0 for d in dims):
            continue
        total += element_size(spec.datatype) * math.prod(dims)
    return total


def slot_size(needed: int, current: int = 0) -> int:
    """Size for a slot that must hold ``needed`` bytes and now has ``current``.

    Whole pages, at least :data:`MIN_SLOT_BYTES`, and at least double the current
    size when it grows, so a growing workload reallocates a logarithmic number of
    times.
    """
    if needed <= current:
        return current
    size = max(needed, 2 * current, MIN_SLOT_BYTES)
    return -(-size // _PAGE) * _PAGE


# ---------------------------------------------------------------- segments


def segment_prefix(pid: int | None = None) -> str:
    """Every segment process ``pid`` (default: this one) creates has a name starting so."""
    return f"sls{os.getpid() if pid is None else pid}_"


class Segment:
    """A shared memory segment this process created and will unlink."""

    def __init__(self, size: int) -> None:
        prefix = segment_prefix()
        for _ in range(8):
            try:
                self._shm = SharedMemory(name=prefix + secrets.token_hex(6), create=True, size=size)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise InternalError(f"cannot create a {size}-byte shared memory segment: {exc}") from None
        else:
            raise InternalError("could not find an unused shared memory name")
        self.name: str = self._shm.name
        self.size: int = size
        self._closed = False

    @property
    def buf(self) -> memoryview:
        buf = self._shm.buf
        assert buf is not None, "segment used after close"
        return buf

    def close(self) -> None:
        """Unmap and unlink (idempotent). The name goes even if a view is still alive."""
        if self._closed:
            return
        self._closed = True
        try:
            self._shm.close()
        except BufferError:
            pass  # a caller still holds a view: the mapping lives until it goes
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


class SlotPool:
    """The parent's slots: ``count`` segments, each holding one batch at a time."""

    def __init__(self, count: int, size: int) -> None:
        self._segments: list[Segment] = []
        try:
            for _ in range(count):
                self._segments.append(Segment(slot_size(size)))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._segments)

    def names(self) -> list[str]:
        return [s.name for s in self._segments]

    def segment(self, slot: int) -> Segment:
        return self._segments[slot]

    def ensure(self, slot: int, needed: int) -> Segment:
        """Slot ``slot``'s segment, replaced by a bigger one first if it is under ``needed``."""
        segment = self._segments[slot]
        if segment.size < needed:
            bigger = Segment(slot_size(needed, segment.size))
            self._segments[slot] = bigger
            segment.close()
            segment = bigger
        return segment

    def close(self) -> None:
        for segment in self._segments:
            segment.close()


class AttachedSlots:
    """The worker's side: each slot's segment mapped once, remapped when the parent grows it."""

    def __init__(self) -> None:
        self._by_slot: dict[int, SharedMemory] = {}

    def buffer(self, slot: int, segment: str) -> memoryview:
        shm = self._by_slot.get(slot)
        if shm is None or shm.name != segment:
            if shm is not None:
                _close_quietly(shm)
            # Python 3.11 registers attached segments with the resource tracker it
            # shares with the parent; the parent's unlink unregisters the name.
            shm = SharedMemory(name=segment)
            self._by_slot[slot] = shm
        buf = shm.buf
        assert buf is not None
        return buf

    def close(self) -> None:
        for shm in self._by_slot.values():
            _close_quietly(shm)
        self._by_slot.clear()


def _close_quietly(shm: SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass

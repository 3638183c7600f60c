"""Tensors as raw bytes: the layout shared by the HTTP binary extension and gRPC raw contents.

Fixed-size datatypes are little-endian, row-major, without padding; BOOL is one
byte per element (0 or 1). BYTES elements are each a 4-byte little-endian
unsigned length followed by that many bytes.

Every function that reads client bytes raises
:class:`~sloserve.errors.InvalidArgumentError` with a message starting with
``label`` (e.g. ``"input 'x'"``) so the client knows which tensor is wrong.
Decoded arrays are fresh, writable copies: they never alias the request body.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np

from sloserve.datatypes import DATATYPES, numpy_dtype
from sloserve.errors import InvalidArgumentError

_LENGTH: Final = struct.Struct("<I")
_LENGTH_SIZE: Final = _LENGTH.size

_LITTLE_ENDIAN: Final[dict[str, np.dtype[Any]]] = {
    name: numpy_dtype(name).newbyteorder("<") for name in DATATYPES if name != "BYTES"
}

INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    name: (int(info.min), int(info.max))
    for name, info in (
        ("UINT8", np.iinfo(np.uint8)),
        ("UINT16", np.iinfo(np.uint16)),
        ("UINT32", np.iinfo(np.uint32)),
        ("UINT64", np.iinfo(np.uint64)),
        ("INT8", np.iinfo(np.int8)),
        ("INT16", np.iinfo(np.int16)),
        ("INT32", np.iinfo(np.int32)),
        ("INT64", np.iinfo(np.int64)),
    )
}
"""Inclusive ``(min, max)`` of each integer datatype."""


def checked_shape(shape: object, label: str) -> tuple[int, ...]:
    """``shape`` (a list or tuple) as a tuple of non-negative ints, or a clear error."""
    if type(shape) is not list and type(shape) is not tuple:
        raise InvalidArgumentError(f"{label}: shape must be a list of integers, got {shape!r}")
    for dim in shape:
        if type(dim) is not int:
            raise InvalidArgumentError(f"{label}: shape must be a list of integers, got {list(shape)!r}")
        if dim < 0:
            raise InvalidArgumentError(f"{label}: shape {list(shape)} has a negative dimension")
    return tuple(shape)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def array_from_raw(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray[Any, Any]:
    """Decode one tensor's raw bytes into an array of ``datatype`` in ``shape``."""
    count = element_count(shape)
    if datatype == "BYTES":
        return bytes_elements_from_raw(raw, count, label).reshape(shape)
    wire = _LITTLE_ENDIAN[datatype]
    expected = count * wire.itemsize
    if len(raw) != expected:
        raise InvalidArgumentError(
            f"{label}: binary data has {len(raw)} bytes but shape {list(shape)} of {datatype} "
            f"needs {expected} ({count} elements of {wire.itemsize} bytes)"
        )
    if datatype == "BOOL":
        flags: np.ndarray[Any, Any] = np.frombuffer(raw, dtype=np.uint8) != 0
        return flags.reshape(shape)
    return np.frombuffer(raw, dtype=wire).astype(numpy_dtype(datatype)).reshape(shape)


def raw_from_array(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """Encode an array as the raw bytes of ``datatype`` (cast when its dtype differs)."""
    if datatype == "BYTES":
        return raw_from_bytes_elements(array)
    return array.astype(_LITTLE_ENDIAN[datatype], copy=False).tobytes()


def raw_from_bytes_elements(array: np.ndarray[Any, Any]) -> bytes:
    """Length-prefix each element (``bytes`` as is, ``str`` as UTF-8, others via ``str``)."""
    parts: list[bytes] = []
    append = parts.append
    for item in array.reshape(-1):
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, str):
            data = item.encode("utf-8")
        else:
            data = str(item).encode("utf-8")
        append(_LENGTH.pack(len(data)))
        append(data)
    return b"".join(parts)


def bytes_elements_from_raw(raw: bytes | memoryview, count: int, label: str) -> np.ndarray[Any, Any]:
    """Split length-prefixed BYTES data into a flat object array of exactly ``count`` ``bytes``."""
    view = memoryview(raw)
    total = len(view)
    if count * _LENGTH_SIZE > total:
        raise InvalidArgumentError(
            f"{label}: BYTES data has {total} bytes, too few for {count} elements "
            f"(each needs at least a {_LENGTH_SIZE}-byte length prefix)"
        )
    out = np.empty(count, dtype=np.object_)
    unpack = _LENGTH.unpack_from
    offset = 0
    for index in range(count):
        if offset + _LENGTH_SIZE > total:
            raise InvalidArgumentError(
                f"{label}: BYTES element {index} has a truncated length prefix at byte {offset} of {total}"
            )
        (length,) = unpack(view, offset)
        offset += _LENGTH_SIZE
        end = offset + length
        if end > total:
            raise InvalidArgumentError(
                f"{label}: BYTES element {index} declares {length} bytes but only {total - offset} remain"
            )
        out[index] = bytes(view[offset:end])
        offset = end
    if offset != total:
        raise InvalidArgumentError(
            f"{label}: BYTES data has {total - offset} bytes left over after the {count} elements its shape holds"
        )
    return out

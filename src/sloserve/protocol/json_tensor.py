"""Tensor data as JSON values: the ``data`` member of a v2 JSON input or output.

Decoding converts the whole (flat or nested, row-major) list with one
``np.asarray`` call and checks the inferred kind against the datatype; only when
that check fails are the nested lists walked in Python, to name the offending
element in the error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from sloserve.datatypes import numpy_dtype
from sloserve.errors import InvalidArgumentError
from sloserve.protocol.raw_tensor import INTEGER_RANGES, element_count

# Inferred numpy kinds each datatype accepts from JSON: integers are fine for
# floats, but floats are never silently truncated to integers, strings never
# parsed as numbers, and only true/false are BOOL.
_FLOATS: Final = frozenset("iuf")
_INTEGERS: Final = frozenset("iu")
_ACCEPTED_KINDS: Final[dict[str, frozenset[str]]] = {
    "BOOL": frozenset("b"),
    "UINT8": _INTEGERS,
    "UINT16": _INTEGERS,
    "UINT32": _INTEGERS,
    "UINT64": _INTEGERS,
    "INT8": _INTEGERS,
    "INT16": _INTEGERS,
    "INT32": _INTEGERS,
    "INT64": _INTEGERS,
    "FP16": _FLOATS,
    "FP32": _FLOATS,
    "FP64": _FLOATS,
}

_CONVERSION_ERRORS: Final = (ValueError, TypeError, OverflowError, RecursionError)


def array_from_json(data: Any, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray[Any, Any]:
    """Convert JSON ``data`` into an array of ``datatype`` reshaped to ``shape``."""
    if datatype == "BYTES":
        return _bytes_from_json(data, shape, label)
    try:
        inferred = np.asarray(data)
    except _CONVERSION_ERRORS:
        raise InvalidArgumentError(
            f"{label}: data must be a flat list or an evenly nested list (rows of equal length, at most 64 levels deep)"
        ) from None
    target = numpy_dtype(datatype)
    if inferred.size:
        if inferred.dtype.kind not in _ACCEPTED_KINDS[datatype]:
            _check_elements(data, datatype, label)
            # Every element fits, but numpy inferred no common type for them (e.g. 0 and
            # 2**63 become float64, losing precision): convert to the target directly.
            try:
                inferred = np.asarray(data, dtype=target)
            except _CONVERSION_ERRORS as exc:
                raise InvalidArgumentError(f"{label}: data does not fit {datatype}: {exc}") from None
        elif inferred.dtype != target and target.kind in "iu":
            _check_integer_range(inferred, data, datatype, label)
    _check_count(inferred.size, shape, label)
    return inferred.astype(target, copy=False).reshape(shape)


def json_from_array(array: np.ndarray[Any, Any], datatype: str) -> Any:
    """A flat, orjson-serializable form of ``array`` (numpy with ``OPT_SERIALIZE_NUMPY``).

    BYTES elements become strings, which requires them to be valid UTF-8.
    """
    if datatype == "BYTES":
        return [_text_of(item) for item in array.reshape(-1)]
    flat = array.astype(numpy_dtype(datatype), copy=False).reshape(-1)
    if flat.flags.c_contiguous and flat.dtype.isnative:
        return flat
    return flat.tolist()


def _text_of(item: object) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.decode("utf-8")  # UnicodeDecodeError is handled by the caller
    return str(item)


def _check_count(size: int, shape: tuple[int, ...], label: str) -> None:
    expected = element_count(shape)
    if size != expected:
        raise InvalidArgumentError(f"{label}: shape {list(shape)} holds {expected} elements but data has {size}")


def _check_integer_range(inferred: np.ndarray[Any, Any], data: Any, datatype: str, label: str) -> None:
    low, high = INTEGER_RANGES[datatype]
    if low <= inferred.min() and inferred.max() <= high:
        return
    _check_range(data, datatype, label)


def _check_range(data: Any, datatype: str, label: str) -> None:
    low, high = INTEGER_RANGES[datatype]
    for value in _leaves(data):
        if not low <= value <= high:
            raise InvalidArgumentError(f"{label}: value {value} is out of range for {datatype} [{low}, {high}]")


def _bytes_from_json(data: Any, shape: tuple[int, ...], label: str) -> np.ndarray[Any, Any]:
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list):
        raise InvalidArgumentError(f"{label}: BYTES data must be a list of strings, got {_kind(data)}")
    try:
        items = list(_leaves(data))
    except RecursionError:
        raise InvalidArgumentError(f"{label}: BYTES data is nested too deeply") from None
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgumentError(f"{label}: BYTES data must be strings, got {_kind(item)} {_short(item)}")
    _check_count(len(items), shape, label)
    out = np.empty(len(items), dtype=np.object_)
    out[:] = [item.encode("utf-8") for item in items]
    return out.reshape(shape)


def _leaves(data: Any) -> Iterator[Any]:
    """Every non-list value inside nested lists, in row-major order."""
    if isinstance(data, list):
        for item in data:
            yield from _leaves(item)
    else:
        yield data


def _check_elements(data: Any, datatype: str, label: str) -> None:
    """Walk ``data`` and name the first element that does not fit ``datatype``, if any."""
    integers = numpy_dtype(datatype).kind in "iu"
    for value in _leaves(data):
        if datatype == "BOOL":
            if not isinstance(value, bool):
                problem = f"BOOL data must be true or false, got {_kind(value)} {_short(value)}"
                raise InvalidArgumentError(f"{label}: {problem}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            problem = f"{datatype} data must be numbers, got {_kind(value)} {_short(value)}"
            raise InvalidArgumentError(f"{label}: {problem}")
        elif integers and isinstance(value, float):
            raise InvalidArgumentError(f"{label}: {datatype} data must be integers, got {value!r}")
    if integers:
        _check_range(data, datatype, label)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

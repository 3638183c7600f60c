"""Open Inference Protocol datatype names and their numpy equivalents."""

from __future__ import annotations

from typing import Final

import numpy as np

from sloserve.errors import InvalidArgumentError

# BYTES tensors are numpy object arrays holding ``bytes`` elements.
_NUMPY_BY_DATATYPE: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_DATATYPE_BY_NUMPY: Final[dict[np.dtype[np.generic], str]] = {v: k for k, v in _NUMPY_BY_DATATYPE.items()}

DATATYPES: Final[tuple[str, ...]] = tuple(_NUMPY_BY_DATATYPE)


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype of a protocol datatype, or a clear error."""
    try:
        return _NUMPY_BY_DATATYPE[datatype]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise InvalidArgumentError(f"unknown datatype {datatype!r}; expected one of {known}") from None


def datatype_of(dtype: np.dtype[np.generic]) -> str:
    """The protocol datatype of a numpy dtype (``bytes``/``str`` arrays are BYTES)."""
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _DATATYPE_BY_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise InvalidArgumentError(f"numpy dtype {dtype} has no protocol datatype") from None


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype (BYTES has none: raises)."""
    if datatype == "BYTES":
        raise InvalidArgumentError("BYTES elements have no fixed size")
    return numpy_dtype(datatype).itemsize

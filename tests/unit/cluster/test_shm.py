"""The shared memory transport's pure parts: control messages and slot layout."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sloserve.cluster import shm
from sloserve.errors import InternalError, InvalidArgumentError
from sloserve.model_config import TensorSpec

pytestmark = pytest.mark.unit

Array = np.ndarray[Any, Any]


def _roundtrip(tensors: dict[str, Array], start: int = 0, *, copy: bool = True) -> dict[str, Array]:
    packed = shm.pack(tensors.items(), start)
    buf = memoryview(bytearray(packed.end))
    shm.write(buf, packed)
    return shm.read(buf, packed.refs, copy=copy)


# ---------------------------------------------------------------- messages

REF = shm.TensorRef("X", "<f4", (3, 8), 0, 96)
MESSAGES: list[shm.Message] = [
    shm.RunRequest(7, 1, "sls1_abc", (REF, REF._replace(name="M", offset=128)), 192, ("Y", "Z")),
    shm.RunReply(7, (shm.TensorRef("Y", "<f4", (3, 4), 192, 48),), (), None),
    shm.RunReply(8, (shm.TensorRef("Y", "<i8", (2,), shm.INLINE, 16),), (np.arange(2),), None),
    shm.RunReply(9, (), (), ("invalid_argument", "input 'X' has dtype float64")),
    shm.RunReply(10, (), (), None, 12345.678),
    shm.Ready((TensorSpec("X", "FP32", (-1, 8)),), (TensorSpec("Y", "FP32", (-1, 4)),)),
    shm.LoadFailed("invalid_argument", "not an ONNX model"),
    shm.Shutdown(),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_survive_encoding(msg: shm.Message) -> None:
    decoded = shm.decode(shm.encode(msg))
    assert type(decoded) is type(msg)
    if isinstance(msg, shm.RunReply):
        assert isinstance(decoded, shm.RunReply)
        assert decoded._replace(inline=()) == msg._replace(inline=())
        for got, want in zip(decoded.inline, msg.inline, strict=True):
            np.testing.assert_array_equal(got, want)
    else:
        assert decoded == msg


@pytest.mark.parametrize("msg", [m for m in MESSAGES if not isinstance(m, shm.RunReply) or not m.inline])
def test_messages_carry_no_sloserve_classes(msg: shm.Message) -> None:
    # Plain tuples of builtins: cheap to pickle, and nothing to unpickle but data.
    assert b"sloserve" not in shm.encode(msg)


def test_request_encoding_is_small() -> None:
    assert len(shm.encode(MESSAGES[0])) < 200


@pytest.mark.parametrize("data", [b"garbage", pickle.dumps((99, 1)), pickle.dumps(("run",))])
def test_malformed_messages_are_internal_errors(data: bytes) -> None:
    with pytest.raises(InternalError, match="malformed worker message"):
        shm.decode(data)


# ---------------------------------------------------------------- layout


def test_tensors_are_aligned_and_do_not_overlap() -> None:
    tensors = {
        "a": np.ones((3, 5), np.float32),  # 60 bytes
        "b": np.ones(1, np.int8),
        "c": np.ones((2, 2), np.float64),
    }
    packed = shm.pack(tensors.items(), start=10)
    offsets = [r.offset for r in packed.refs]
    assert offsets == [64, 128, 192]
    assert all(o % shm.ALIGN == 0 for o in offsets)
    assert [r.nbytes for r in packed.refs] == [60, 1, 32]
    assert packed.end == 256
    assert [(r.dtype, r.shape) for r in packed.refs] == [("<f4", (3, 5)), ("|i1", (1,)), ("<f8", (2, 2))]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(4, 6),
        np.arange(5, dtype=np.int64),
        np.array([True, False, True]),
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.array(3.5, dtype=np.float64),  # a scalar
        np.zeros((0, 8), np.float32),  # an empty batch
        np.arange(40, dtype=np.int32).reshape(5, 8)[:, ::3],  # not contiguous
        np.array([b"ab", b"", b"\x00\xff"], dtype=object),  # BYTES
        np.array([["x", "yz"]]),  # fixed-width unicode travels raw
    ],
    ids=["fp32", "int64", "bool", "fp16", "scalar", "empty", "strided", "bytes", "unicode"],
)
def test_tensors_round_trip_through_a_slot(array: Array) -> None:
    got = _roundtrip({"t": array}, start=100)["t"]
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_object_tensors_are_pickled_into_the_slot() -> None:
    packed = shm.pack([("s", np.array([b"a", b"bc"], dtype=object))])
    assert packed.refs[0].dtype == shm.PICKLED
    assert isinstance(packed.data[0], bytes)


def test_copies_do_not_alias_the_slot_but_views_do() -> None:
    packed = shm.pack([("x", np.ones(4, np.float32))])
    buf = memoryview(bytearray(packed.end))
    shm.write(buf, packed)
    copy = shm.read(buf, packed.refs, copy=True)["x"]
    view = shm.read(buf, packed.refs, copy=False)["x"]
    shm.write(buf, shm.pack([("x", np.full(4, 7, np.float32))]))
    np.testing.assert_array_equal(copy, np.ones(4, np.float32))
    np.testing.assert_array_equal(view, np.full(4, 7, np.float32))


def test_inline_outputs_come_from_the_reply() -> None:
    refs = (
        shm.TensorRef("big", "<f4", (2,), shm.INLINE, 8),
        shm.TensorRef("small", "<i8", (1,), 0, 8),
    )
    buf = memoryview(bytearray(64))
    buf[:8] = np.array([5], np.int64).tobytes()
    got = shm.read(buf, refs, copy=True, inline=(np.array([1.0, 2.0], np.float32),))
    np.testing.assert_array_equal(got["big"], [1.0, 2.0])
    np.testing.assert_array_equal(got["small"], [5])


def test_a_ref_outside_the_slot_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="outside"):
        shm.read(memoryview(bytearray(64)), [shm.TensorRef("x", "<f4", (32,), 0, 128)], copy=True)


def test_writing_more_than_the_slot_holds_is_refused() -> None:
    packed = shm.pack([("x", np.ones(100, np.float32))])
    with pytest.raises(InternalError, match="cannot hold"):
        shm.write(memoryview(bytearray(64)), packed)


def test_non_arrays_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="'x'"):
        shm.pack([("x", [[1.0], [2.0, 3.0]])])


@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.float32, np.int64, np.uint8, np.bool_, np.float16]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        min_size=1,
        max_size=4,
    ),
    start=st.integers(0, 300),
)
def test_any_tensors_round_trip(arrays: list[Array], start: int) -> None:
    tensors = {f"t{i}": a for i, a in enumerate(arrays)}
    got = _roundtrip(tensors, start)
    assert list(got) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(got[name], array)
        assert got[name].dtype == array.dtype


def test_batch_rows_is_the_first_dimension_of_the_first_tensor() -> None:
    assert shm.batch_rows(shm.pack([("x", np.ones((5, 2)))]).refs) == 5
    assert shm.batch_rows(shm.pack([("x", np.float32(1))]).refs) == 1


def test_row_bytes_count_known_fixed_size_tensors() -> None:
    specs = [
        TensorSpec("x", "FP32", (-1, 8)),  # 32
        TensorSpec("y", "INT64", (-1,)),  # 8
        TensorSpec("img", "UINT8", (-1, 3, 4, 4)),  # 48
        TensorSpec("text", "BYTES", (-1, 1)),  # unknown
        TensorSpec("seq", "FP32", (-1, -1)),  # unknown
    ]
    assert shm.row_nbytes(specs) == 32 + 8 + 48


@pytest.mark.parametrize(
    ("needed", "current", "expected"),
    [
        (1, 0, shm.MIN_SLOT_BYTES),
        (shm.MIN_SLOT_BYTES + 1, 0, shm.MIN_SLOT_BYTES + os.sysconf("SC_PAGE_SIZE")),
        (100, shm.MIN_SLOT_BYTES, shm.MIN_SLOT_BYTES),  # fits: unchanged
        (shm.MIN_SLOT_BYTES + 1, shm.MIN_SLOT_BYTES, 2 * shm.MIN_SLOT_BYTES),  # grows at least 2x
        (10 * shm.MIN_SLOT_BYTES, shm.MIN_SLOT_BYTES, 10 * shm.MIN_SLOT_BYTES),
    ],
)
def test_slot_size(needed: int, current: int, expected: int) -> None:
    assert shm.slot_size(needed, current) == expected


# ---------------------------------------------------------------- segments (real shared memory, one process)


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(shm.segment_prefix())}


def test_slot_pool_grows_a_slot_and_unlinks_what_it_replaces() -> None:
    pool = shm.SlotPool(2, 1000)
    try:
        first = set(pool.names())
        assert first <= _segments()
        assert pool.segment(0).size == shm.MIN_SLOT_BYTES
        grown = pool.ensure(0, 3 * shm.MIN_SLOT_BYTES)
        assert grown.size >= 3 * shm.MIN_SLOT_BYTES
        assert pool.ensure(0, 10) is grown
        assert pool.names()[0] not in first
        assert _segments() & first == {pool.names()[1]}
    finally:
        pool.close()
    assert not _segments() & (first | set(pool.names()))


def test_attached_slots_follow_a_grown_segment() -> None:
    pool = shm.SlotPool(1, 1000)
    attached = shm.AttachedSlots()
    try:
        pool.segment(0).buf[:3] = b"abc"
        assert bytes(attached.buffer(0, pool.segment(0).name)[:3]) == b"abc"
        bigger = pool.ensure(0, 2 * shm.MIN_SLOT_BYTES)
        bigger.buf[:3] = b"xyz"
        buf = attached.buffer(0, bigger.name)
        assert len(buf) == bigger.size
        assert bytes(buf[:3]) == b"xyz"
        del buf
    finally:
        attached.close()
        pool.close()

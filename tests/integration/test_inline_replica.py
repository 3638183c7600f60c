"""InlineReplica: the model run in the server's own process, with real ONNX Runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from sloserve.cluster.inline import INLINE_MAX_BYTES, InlineReplica, runs_inline
from sloserve.errors import InvalidArgumentError, UnavailableError
from sloserve.types import ReplicaId
from tests.integration.test_local_replica import OUTPUTS, assert_matches, batch, build_linear_model, reference

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_linear_model(tmp_path_factory.mktemp("inline") / "linear.onnx")


async def test_answers_equal_onnxruntime_and_stop_refuses_more(model: Path) -> None:
    replica = InlineReplica(ReplicaId("inline"), model)
    assert not replica.healthy and replica.state == "new"
    with pytest.raises(UnavailableError, match="not running"):
        await replica.run({"X": batch(1, seed=0)}, ())
    await replica.start()
    assert replica.healthy and replica.capacity == 1 and replica.outstanding == 0 and replica.pid is None
    for rows in (1, 7, 300):
        x = batch(rows, seed=rows)
        assert_matches(await replica.run({"X": x}, ()), reference(model, x))  # no names: every output
    only = await replica.run({"X": batch(2, seed=1)}, ["Z"])
    assert list(only) == ["Z"] and only["Z"].shape == (2,)
    await replica.stop()
    assert not replica.healthy and replica.state == "stopped"
    with pytest.raises(UnavailableError, match="stopped"):
        await replica.run({"X": batch(1, seed=0)}, OUTPUTS)


async def test_bad_input_is_a_clear_error_and_the_replica_keeps_serving(model: Path) -> None:
    replica = InlineReplica(ReplicaId("inline"), model)
    await replica.start()
    with pytest.raises(InvalidArgumentError, match="dtype"):
        await replica.run({"X": batch(1, seed=0).astype(np.float64)}, ())
    with pytest.raises(InvalidArgumentError, match="missing"):
        await replica.run({"Y": batch(1, seed=0)}, ())
    x = batch(3, seed=3)
    assert_matches(await replica.run({"X": x}, ()), reference(model, x))
    await replica.stop()


async def test_a_file_that_is_not_a_model_fails_start_without_blocking_the_loop(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an ONNX model")
    replica = InlineReplica(ReplicaId("garbage"), garbage)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    with pytest.raises(InvalidArgumentError, match="not a loadable ONNX model"):
        await replica.start()
    ticker.cancel()
    assert ticks > 0  # the load ran in a thread while the loop went on
    assert replica.state == "stopped" and not replica.healthy


def test_auto_runs_small_variants_inline_and_the_kind_overrides(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    (small / "model.onnx").write_bytes(b"x" * 1000)
    (large / "model.onnx").write_bytes(b"x" * 1000)
    (large / "weights.bin").write_bytes(b"x" * INLINE_MAX_BYTES)  # external data counts
    assert runs_inline("auto", small / "model.onnx")
    assert not runs_inline("auto", large / "model.onnx")
    assert runs_inline("inline", large / "model.onnx")
    assert not runs_inline("process", small / "model.onnx")
    assert not runs_inline("auto", tmp_path / "missing" / "model.onnx")

"""Small ONNX graphs and scikit-learn models built in the test, no downloads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

Dim = int | str | None
TensorDecl = tuple[str, int, Sequence[Dim] | None]


def _identity_model(inputs: Sequence[TensorDecl], outputs: Sequence[TensorDecl]) -> bytes:
    """A graph whose i-th output is Identity of its i-th input."""
    nodes = [helper.make_node("Identity", [i[0]], [o[0]]) for i, o in zip(inputs, outputs, strict=True)]
    graph = helper.make_graph(
        nodes,
        "identity",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture
def identity_model() -> Callable[[Sequence[TensorDecl], Sequence[TensorDecl]], bytes]:
    """Serialized Identity graphs: ``identity_model(inputs, outputs)``."""
    return _identity_model


@pytest.fixture
def write_identity(tmp_path: Path) -> Callable[..., Path]:
    def write(
        inputs: Sequence[TensorDecl] = (("x", TensorProto.FLOAT, ["N", 3]),),
        outputs: Sequence[TensorDecl] = (("y", TensorProto.FLOAT, ["N", 3]),),
        name: str = "identity.onnx",
    ) -> Path:
        path = tmp_path / name
        path.write_bytes(_identity_model(inputs, outputs))
        onnx.checker.check_model(str(path))
        return path

    return write

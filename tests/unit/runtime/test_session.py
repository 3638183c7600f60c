from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from sloserve.errors import InternalError, InvalidArgumentError, NotFoundError
from sloserve.model_config import TensorSpec
from sloserve.runtime.session import OnnxSession


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory, iris: tuple[np.ndarray, np.ndarray]) -> Path:
    x, y = iris
    est = LogisticRegression(max_iter=500).fit(x, y)
    onx = convert_sklearn(
        est,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(est): {"zipmap": False}},
        target_opset=21,
    )
    path = tmp_path_factory.mktemp("iris") / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def test_signature_uses_protocol_datatypes_and_minus_one_for_symbolic_dims(iris_model: Path) -> None:
    session = OnnxSession(iris_model)
    assert session.inputs == (TensorSpec("input", "FP32", (-1, 4)),)
    assert session.outputs == (
        TensorSpec("label", "INT64", (-1,)),
        TensorSpec("probabilities", "FP32", (-1, 3)),
    )


def test_run_equals_onnxruntime_directly(iris_model: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = iris
    reference = ort.InferenceSession(str(iris_model), providers=["CPUExecutionProvider"])
    label, probabilities = reference.run(["label", "probabilities"], {"input": x})

    out = OnnxSession(iris_model, intra_op_threads=2).run({"input": x}, ["probabilities", "label"])

    assert list(out) == ["probabilities", "label"]
    np.testing.assert_array_equal(out["label"], label)
    np.testing.assert_array_equal(out["probabilities"], probabilities)


def test_bytes_tensors_round_trip_as_bytes(write_identity: Callable[..., Path]) -> None:
    path = write_identity(
        inputs=[("text", TensorProto.STRING, ["N"]), ("n", TensorProto.INT32, [2])],
        outputs=[("same", TensorProto.STRING, ["N"]), ("m", TensorProto.INT32, [2])],
    )
    session = OnnxSession(path)
    assert session.inputs == (TensorSpec("text", "BYTES", (-1,)), TensorSpec("n", "INT32", (2,)))
    text = np.array([b"caf\xc3\xa9", b"", b"x"], dtype=object)

    out = session.run({"text": text, "n": np.array([1, 2], np.int32)}, ["same"])

    assert out["same"].dtype == object
    assert out["same"].tolist() == [b"caf\xc3\xa9", b"", b"x"]


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a model\n", bytes(range(256)) * 8, b""],
    ids=["text", "random-bytes", "empty"],
)
def test_non_model_files_are_rejected_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidArgumentError, match="is not a loadable ONNX model") as info:
        OnnxSession(path)
    assert str(path) in info.value.message


def test_truncated_model_is_rejected(tmp_path: Path, iris_model: Path) -> None:
    data = iris_model.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgumentError, match="is not a loadable ONNX model"):
        OnnxSession(path)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no such file"):
        OnnxSession(tmp_path / "absent.onnx")


def test_non_tensor_outputs_are_refused(tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = iris
    est = LogisticRegression(max_iter=500).fit(x, y)
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=21)
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(onx.SerializeToString())  # the default ZipMap output is a sequence of maps
    with pytest.raises(InvalidArgumentError, match="only tensors can be served"):
        OnnxSession(path)


def test_bad_inputs_become_invalid_argument(iris_model: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    session = OnnxSession(iris_model)
    x, _ = iris
    with pytest.raises(InvalidArgumentError, match="invalid dimensions"):
        session.run({"input": x[:, :3]}, ["label"])
    with pytest.raises(InvalidArgumentError, match=r"[Ii]nvalid rank"):
        session.run({"input": x[0]}, ["label"])
    with pytest.raises(InvalidArgumentError, match="dtype float64"):
        session.run({"input": x.astype(np.float64)}, ["label"])
    with pytest.raises(InvalidArgumentError, match=r"missing \['input'\], unknown \['x'\]"):
        session.run({"x": x}, ["label"])
    with pytest.raises(NotFoundError, match="unknown output 'scores'"):
        session.run({"input": x}, ["scores"])


def test_model_failure_on_valid_looking_input_is_internal(tmp_path: Path) -> None:
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "reshape.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path.write_bytes(model.SerializeToString())
    session = OnnxSession(path)

    with pytest.raises(InternalError, match="Reshape"):
        session.run({"x": np.zeros(5, np.float32), "shape": np.array([2, 2])}, ["y"])
    assert session.run({"x": np.zeros(4, np.float32), "shape": np.array([2, 2])}, ["y"])["y"].shape == (2, 2)

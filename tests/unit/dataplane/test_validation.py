from __future__ import annotations

import numpy as np
import pytest

from sloserve.dataplane.validation import check_request
from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.protocol.types import InferRequest, RequestedOutput, Tensor
from sloserve.types import ModelName

CONFIG = ModelConfig(
    name=ModelName("m"),
    inputs=(TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "INT64", (-1,))),
    outputs=(TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "INT64", (-1,))),
    max_batch_size=8,
)


def tensor(name: str, datatype: str, shape: tuple[int, ...]) -> Tensor:
    dtype = np.float32 if datatype == "FP32" else np.int64
    return Tensor(name, datatype, shape, np.zeros(shape, dtype=dtype))


def test_a_valid_request_gives_inputs_rows_and_outputs() -> None:
    request = InferRequest(
        "m", [tensor("a", "FP32", (3, 4)), tensor("b", "INT64", (3,))], outputs=[RequestedOutput("z")]
    )
    inputs, rows, outputs = check_request(request, CONFIG)
    assert set(inputs) == {"a", "b"} and rows == 3 and outputs == ("z",)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([tensor("a", "FP32", (3, 4))], "lacks"),
        ([tensor("a", "FP32", (3, 4)), tensor("b", "INT64", (3,)), tensor("c", "FP32", (3,))], "no input 'c'"),
        ([tensor("a", "INT64", (3, 4)), tensor("b", "INT64", (3,))], "datatype FP32, got INT64"),
        ([tensor("a", "FP32", (3, 5)), tensor("b", "INT64", (3,))], "shape"),
        ([tensor("a", "FP32", (3,)), tensor("b", "INT64", (3,))], "shape"),
        ([tensor("a", "FP32", (3, 4)), tensor("b", "INT64", (2,))], "disagree"),
        ([tensor("a", "FP32", (9, 4)), tensor("b", "INT64", (9,))], "max_batch_size"),
        ([tensor("a", "FP32", (1, 4)), tensor("a", "FP32", (1, 4))], "more than once"),
    ],
)
def test_bad_requests_are_refused_clearly(inputs: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        check_request(InferRequest("m", inputs), CONFIG)


def test_unknown_requested_output_is_refused() -> None:
    request = InferRequest(
        "m", [tensor("a", "FP32", (1, 4)), tensor("b", "INT64", (1,))], outputs=[RequestedOutput("q")]
    )
    with pytest.raises(InvalidArgumentError, match="no output 'q'"):
        check_request(request, CONFIG)

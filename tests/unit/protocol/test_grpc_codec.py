"""The gRPC codec: typed and raw contents, parameters, and every client mistake."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sloserve.errors import InvalidArgumentError
from sloserve.policy.selection import Slo
from sloserve.protocol.generated import inference_pb2 as pb
from sloserve.protocol.grpc_codec import (
    parameters_from_proto,
    parameters_to_proto,
    repository_parameters_from_proto,
    request_from_proto,
    response_to_proto,
)
from sloserve.protocol.types import InferResponse, Tensor


def request_with(
    contents: dict[str, list[Any]] | None = None,
    *,
    name: str = "x",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (2,),
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    entry = msg.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in (contents or {}).items():
        getattr(entry.contents, field).extend(values)
    return msg


def expect_error(match: str, msg: pb.ModelInferRequest) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        request_from_proto(msg)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False]),
        ("INT8", "int_contents", [-128, 127]),
        ("INT16", "int_contents", [-5, 300]),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 255]),
        ("UINT16", "uint_contents", [0, 65535]),
        ("UINT32", "uint_contents", [0, 2**32 - 1]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("FP32", "fp32_contents", [0.5, -1.25]),
        ("FP64", "fp64_contents", [1e300, -0.1]),
        ("BYTES", "bytes_contents", [b"\x00\xff", b""]),
    ],
)
def test_typed_contents_decode_to_the_datatype(datatype: str, field: str, values: list[Any]) -> None:
    request = request_from_proto(request_with(datatype=datatype, contents={field: values}))

    data = request.inputs[0].data
    assert data.shape == (2,)
    assert data.tolist() == values
    assert data.dtype == (np.object_ if datatype == "BYTES" else np.dtype(datatype.lower().replace("fp", "float")))


def test_raw_contents_decode_in_input_order() -> None:
    msg = pb.ModelInferRequest(model_name="m", model_version="4", id="r")
    msg.inputs.add(name="a", datatype="FP16", shape=[1, 2])
    msg.inputs.add(name="b", datatype="BYTES", shape=[1])
    msg.raw_input_contents.extend([np.array([1.5, -2], dtype="<f2").tobytes(), struct.pack("<I", 2) + b"hi"])

    request = request_from_proto(msg)

    assert (request.model_version, request.id) == ("4", "r")
    assert request.inputs[0].data.dtype == np.float16
    assert request.inputs[0].data.tolist() == [[1.5, -2.0]]
    assert request.inputs[1].data.tolist() == [b"hi"]


def test_empty_version_and_id_decode_as_none() -> None:
    request = request_from_proto(request_with(contents={"fp32_contents": [1, 2]}))

    assert request.model_version is None
    assert request.id is None


def test_response_uses_raw_output_contents_and_parameters() -> None:
    response = InferResponse(
        model_name="m",
        model_version="1",
        id="r",
        outputs=[Tensor("y", "FP32", (1, 2), np.array([[0.5, 1.5]], dtype=np.float32), {"note": "n"})],
        parameters={"variant": "fp16", "queue_us": 12, "hedged": False},
    )

    msg = response_to_proto(response)

    assert (msg.model_name, msg.model_version, msg.id) == ("m", "1", "r")
    (out,) = msg.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("y", "FP32", [1, 2])
    assert not out.HasField("contents")
    assert list(msg.raw_output_contents) == [np.array([0.5, 1.5], dtype="<f4").tobytes()]
    assert parameters_from_proto(msg.parameters) == {"variant": "fp16", "queue_us": 12, "hedged": False}
    assert parameters_from_proto(out.parameters) == {"note": "n"}


# -------------------------------------------------------------- parameters


def test_parameters_round_trip_every_kind() -> None:
    values = {"b": True, "i": -3, "big": 2**64 - 1, "f": 0.25, "s": "text", "np": np.float32(1.5)}
    msg = pb.ModelInferRequest()

    parameters_to_proto(values, msg.parameters)

    assert msg.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    assert msg.parameters["i"].WhichOneof("parameter_choice") == "int64_param"
    assert parameters_from_proto(msg.parameters) == {**values, "np": 1.5}


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, 2**64, -(2**63) - 1])
def test_parameters_to_proto_rejects_unrepresentable_values(value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="parameter 'k'"):
        parameters_to_proto({"k": value}, pb.ModelInferRequest().parameters)


def test_parameter_without_a_value() -> None:
    msg = request_with(contents={"fp32_contents": [1, 2]})
    msg.parameters["empty"].SetInParent()

    expect_error("request: parameter 'empty' has no value", msg)


def test_repository_parameters_decode() -> None:
    msg = pb.RepositoryModelLoadRequest(model_name="m")
    msg.parameters["config"].string_param = "{}"
    msg.parameters["file:1/model.onnx"].bytes_param = b"\x08\x01"
    msg.parameters["poll"].bool_param = True

    assert repository_parameters_from_proto(msg.parameters) == {
        "config": "{}",
        "file:1/model.onnx": b"\x08\x01",
        "poll": True,
    }


# ------------------------------------------------------------ bad requests


def test_no_inputs() -> None:
    expect_error("at least one input", pb.ModelInferRequest(model_name="m"))


def test_input_without_name() -> None:
    expect_error(r"inputs\[0\] must have a name", request_with(name="", contents={"fp32_contents": [1, 2]}))


def test_unknown_datatype() -> None:
    expect_error(
        "input 'x': unknown datatype 'FLOAT'", request_with(datatype="FLOAT", contents={"fp32_contents": [1, 2]})
    )


def test_negative_dimension() -> None:
    expect_error(r"input 'x': shape \[-1\] has a negative dimension", request_with(shape=(-1,)))


def test_typed_element_count_not_matching_shape() -> None:
    expect_error(
        r"input 'x': shape \[2\] holds 2 elements but fp32_contents has 3",
        request_with(contents={"fp32_contents": [1, 2, 3]}),
    )


def test_typed_contents_in_the_wrong_field_name_the_right_one() -> None:
    expect_error(
        "FP32 data goes in fp32_contents, the request filled fp64_contents",
        request_with(contents={"fp64_contents": [1, 2]}),
    )


def test_fp16_typed_contents_not_possible() -> None:
    expect_error("input 'x': FP16 has no typed contents", request_with(datatype="FP16"))


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [("INT8", "int_contents", 128), ("INT16", "int_contents", -40000), ("UINT8", "uint_contents", 256)],
)
def test_narrow_integers_out_of_range(datatype: str, field: str, value: int) -> None:
    expect_error(
        f"input 'x': value {value} in {field} is out of range for {datatype}",
        request_with(datatype=datatype, contents={field: [0, value]}),
    )


def test_raw_contents_count_not_matching_inputs() -> None:
    msg = request_with()
    msg.inputs.add(name="y", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(b"\0" * 8)

    expect_error("1 raw_input_contents entries but 2 inputs", msg)


def test_raw_contents_size_not_matching_shape() -> None:
    msg = request_with()
    msg.raw_input_contents.append(b"\0" * 7)

    expect_error(r"input 'x': binary data has 7 bytes but shape \[2\] of FP32 needs 8", msg)


def test_raw_and_typed_contents_together() -> None:
    msg = request_with(contents={"fp32_contents": [1, 2]})
    msg.raw_input_contents.append(b"\0" * 8)

    expect_error("input 'x': has typed contents but the request uses raw_input_contents", msg)


def test_malformed_raw_bytes_length_prefix() -> None:
    msg = request_with(datatype="BYTES", shape=(1,))
    msg.raw_input_contents.append(struct.pack("<I", 9) + b"short")

    expect_error("input 'x': BYTES element 0 declares 9 bytes but only 5 remain", msg)


def test_duplicate_input_names() -> None:
    msg = request_with(contents={"fp32_contents": [1, 2]})
    msg.inputs.append(msg.inputs[0])

    expect_error("same input more than once", msg)


# ------------------------------------------------------------------------ fuzz

CONTENT_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    "bool_contents": st.lists(st.booleans(), max_size=4),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=4),
    "fp32_contents": st.lists(st.floats(width=32), max_size=4),
    "bytes_contents": st.lists(st.binary(max_size=3), max_size=4),
}
FUZZ_INPUT = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["", "x", "y"]),
        "datatype": st.sampled_from(["FP32", "INT8", "UINT16", "UINT64", "BOOL", "BYTES", "FP16", "F32"]),
        "shape": st.lists(st.integers(-1, 3), max_size=3),
        "contents": st.fixed_dictionaries({}, optional=CONTENT_VALUES),
    }
)


@settings(max_examples=300, deadline=None)
@given(inputs=st.lists(FUZZ_INPUT, max_size=3), raw=st.lists(st.binary(max_size=20), max_size=3))
def test_arbitrary_messages_raise_only_invalid_argument(inputs: list[dict[str, Any]], raw: list[bytes]) -> None:
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=raw)
    for spec in inputs:
        entry = msg.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for field, values in spec["contents"].items():
            getattr(entry.contents, field).extend(values)
    try:
        request = request_from_proto(pb.ModelInferRequest.FromString(msg.SerializeToString()))
    except InvalidArgumentError:
        return
    for tensor in request.inputs:
        assert tensor.data.shape == tensor.shape


def test_admit_sees_the_parameters_before_any_tensor_is_decoded() -> None:
    """As over HTTP: the admission check runs on the request's parameters before its inputs are decoded."""
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    msg.raw_input_contents.append(b"\x00\x00\x80?")  # 4 bytes for 2 values: would not decode
    msg.parameters["latency_slo_ms"].double_param = 5.0
    seen: list[dict[str, Any]] = []

    def refuse(parameters: Any) -> None:
        seen.append(dict(parameters))
        raise InvalidArgumentError("refused by admission")

    with pytest.raises(InvalidArgumentError, match="refused by admission"):
        request_from_proto(msg, refuse)
    assert seen == [{"latency_slo_ms": 5.0}]
    with pytest.raises(InvalidArgumentError, match="input 'a'"):
        request_from_proto(msg)
    good = request_with(contents={"fp32_contents": [1, 2]})
    slo = Slo(latency_ms=25.0)
    assert request_from_proto(good, lambda _: slo).slo is slo and request_from_proto(good).slo is None

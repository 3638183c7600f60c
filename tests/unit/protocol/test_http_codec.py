"""The HTTP/JSON codec: request decoding, response encoding and every client mistake."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sloserve.errors import InvalidArgumentError
from sloserve.policy.selection import Slo
from sloserve.protocol.http_codec import decode_infer_request, encode_error, encode_infer_response
from sloserve.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor


def body_of(document: Any) -> bytes:
    return orjson.dumps(document)


def fp32_input(**overrides: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4]}
    tensor.update(overrides)
    return {k: v for k, v in tensor.items() if v is not None}


def decode(document: Any) -> InferRequest:
    return decode_infer_request(body_of(document), None, "m", None)


def binary_request(inputs: list[tuple[dict[str, Any], bytes]]) -> tuple[bytes, int]:
    header = body_of({"inputs": [tensor for tensor, _ in inputs]})
    return header + b"".join(raw for _, raw in inputs), len(header)


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def expect_error(match: str, body: bytes, header_length: int | None = None) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        decode_infer_request(body, header_length, "m", None)


# ------------------------------------------------------------ decoding requests


def test_decodes_json_request_with_ids_parameters_and_outputs() -> None:
    request = decode_infer_request(
        body_of(
            {
                "id": "req-1",
                "parameters": {"latency_slo_ms": 20, "min_accuracy": 0.9},
                "inputs": [fp32_input(parameters={"scale": "x"})],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        ),
        None,
        "digits",
        "3",
    )

    assert (request.model_name, request.model_version, request.id) == ("digits", "3", "req-1")
    assert request.parameters == {"latency_slo_ms": 20, "min_accuracy": 0.9}
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", "FP32", (2, 2))
    assert tensor.data.dtype == np.float32
    assert tensor.data.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert tensor.parameters == {"scale": "x"}
    assert request.outputs == [RequestedOutput("y", {"binary_data": True})]


def test_decodes_bool_and_bytes_json_data() -> None:
    request = decode(
        {
            "inputs": [
                {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
                {"name": "s", "shape": [1, 2], "datatype": "BYTES", "data": [["héllo", ""]]},
            ]
        }
    )

    assert request.inputs[0].data.dtype == np.bool_
    assert request.inputs[0].data.tolist() == [True, False, True]
    assert request.inputs[1].data.dtype == np.object_
    assert request.inputs[1].data.tolist() == [["héllo".encode(), b""]]


def test_decodes_binary_inputs_in_order_mixed_with_json() -> None:
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    words = length_prefixed(b"ab", b"", b"\xff")
    body, header_length = binary_request(
        [
            ({"name": "a", "shape": [2, 3], "datatype": "INT16", "parameters": {"binary_data_size": 12}}, a.tobytes()),
            ({"name": "j", "shape": [1], "datatype": "FP64", "data": [0.5]}, b""),
            ({"name": "w", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(words)}}, words),
        ]
    )

    request = decode_infer_request(body, header_length, "m", None)

    assert np.array_equal(request.inputs[0].data, a)
    assert request.inputs[0].parameters == {}  # binary_data_size is transport detail
    assert request.inputs[1].data.tolist() == [0.5]
    assert request.inputs[2].data.tolist() == [b"ab", b"", b"\xff"]


def test_binary_input_is_a_writable_copy_not_a_view_of_the_body() -> None:
    body, header_length = binary_request(
        [({"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}, b"\0" * 8)]
    )

    data = decode_infer_request(body, header_length, "m", None).inputs[0].data
    data += 1

    assert data.tolist() == [1.0, 1.0]


def test_fp16_arrives_as_json_numbers() -> None:
    request = decode({"inputs": [{"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, -2]}]})

    assert request.inputs[0].data.dtype == np.float16
    assert request.inputs[0].data.tolist() == [0.5, -2.0]


def test_zero_size_tensor_decodes_with_its_shape() -> None:
    request = decode({"inputs": [{"name": "x", "shape": [0, 3], "datatype": "INT32", "data": []}]})

    assert request.inputs[0].data.shape == (0, 3)
    assert request.inputs[0].data.dtype == np.int32


def test_uint64_beyond_int64_decodes_exactly() -> None:
    request = decode({"inputs": [{"name": "x", "shape": [2], "datatype": "UINT64", "data": [0, 2**64 - 1]}]})

    assert request.inputs[0].data.tolist() == [0, 2**64 - 1]


# ------------------------------------------------------------ encoding responses


def response(*outputs: Tensor, **fields: Any) -> InferResponse:
    return InferResponse(model_name="m", outputs=list(outputs), **fields)


def test_encodes_json_response_with_flat_data_id_version_and_parameters() -> None:
    logits = np.array([[0.25, 0.5], [1.0, -2.0]], dtype=np.float32)
    body, header_length = encode_infer_response(
        response(Tensor("y", "FP32", (2, 2), logits), model_version="1", id="r", parameters={"variant": "int8"}),
        InferRequest(model_name="m", inputs=[]),
    )

    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "parameters": {"variant": "int8"},
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.5, 1.0, -2.0]}],
    }


def test_omits_unset_version_id_and_parameters() -> None:
    body, _ = encode_infer_response(
        response(Tensor("y", "INT64", (1,), np.array([7]))), InferRequest(model_name="m", inputs=[])
    )

    assert orjson.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [1], "data": [7]}],
    }


def test_binary_output_only_for_outputs_that_ask_for_it() -> None:
    y = np.array([1.5, 2.5], dtype=np.float64)
    z = np.array([True, False])
    request = InferRequest(
        model_name="m",
        inputs=[],
        outputs=[RequestedOutput("y", {"binary_data": True}), RequestedOutput("z", {"binary_data": False})],
    )

    body, header_length = encode_infer_response(
        response(Tensor("y", "FP64", (2,), y), Tensor("z", "BOOL", (2,), z)), request
    )

    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["outputs"][0] == {
        "name": "y",
        "datatype": "FP64",
        "shape": [2],
        "parameters": {"binary_data_size": 16},
    }
    assert header["outputs"][1]["data"] == [True, False]
    assert body[header_length:] == y.tobytes()


def test_binary_data_output_makes_binary_the_default() -> None:
    y = np.array([1, 2], dtype=np.uint8)
    z = np.array([3], dtype=np.uint8)
    request = InferRequest(
        model_name="m",
        inputs=[],
        parameters={"binary_data_output": True},
        outputs=[RequestedOutput("z", {"binary_data": False})],
    )

    body, header_length = encode_infer_response(
        response(Tensor("y", "UINT8", (2,), y), Tensor("z", "UINT8", (1,), z)), request
    )

    assert header_length is not None
    outputs = orjson.loads(body[:header_length])["outputs"]
    assert outputs[0]["parameters"] == {"binary_data_size": 2}
    assert outputs[1]["data"] == [3]
    assert body[header_length:] == b"\x01\x02"


def test_binary_bytes_output_uses_length_prefixes() -> None:
    words = np.array([b"ab", "é"], dtype=np.object_)
    request = InferRequest(model_name="m", inputs=[], parameters={"binary_data_output": True})

    body, header_length = encode_infer_response(response(Tensor("w", "BYTES", (2,), words)), request)

    assert body[header_length:] == length_prefixed(b"ab", "é".encode())


def test_json_output_casts_to_its_declared_datatype() -> None:
    body, _ = encode_infer_response(
        response(Tensor("y", "INT32", (2,), np.array([1.0, 2.0]))), InferRequest(model_name="m", inputs=[])
    )

    assert orjson.loads(body)["outputs"][0]["data"] == [1, 2]


def test_non_utf8_bytes_output_as_json_says_to_request_binary() -> None:
    with pytest.raises(InvalidArgumentError, match=r"output 'w'.*binary_data"):
        encode_infer_response(
            response(Tensor("w", "BYTES", (1,), np.array([b"\xff"], dtype=np.object_))),
            InferRequest(model_name="m", inputs=[]),
        )


def test_encode_error_is_v2_error_object() -> None:
    assert orjson.loads(encode_error('bad "thing"')) == {"error": 'bad "thing"'}


# ------------------------------------------------------------------ bad requests


def test_malformed_json() -> None:
    expect_error("not valid JSON", b'{"inputs": [')


def test_malformed_json_hints_at_missing_header_length_when_binary_follows() -> None:
    expect_error("Inference-Header-Content-Length", b'{"inputs": []}\x00\x01\x02')


def test_body_not_an_object() -> None:
    expect_error("must be a JSON object", b"[1, 2]")


@pytest.mark.parametrize("inputs", [None, [], {"name": "x"}])
def test_missing_or_empty_inputs(inputs: Any) -> None:
    document = {} if inputs is None else {"inputs": inputs}
    expect_error("'inputs'", body_of(document))


def test_input_not_an_object() -> None:
    expect_error(r"inputs\[0\] must be a JSON object", body_of({"inputs": [3]}))


def test_missing_name() -> None:
    expect_error(r"inputs\[0\] must have a string 'name'", body_of({"inputs": [fp32_input(name=None)]}))


def test_missing_shape() -> None:
    expect_error("input 'x': missing 'shape'", body_of({"inputs": [fp32_input(shape=None)]}))


def test_missing_datatype() -> None:
    expect_error("input 'x': missing 'datatype'", body_of({"inputs": [fp32_input(datatype=None)]}))


def test_missing_data() -> None:
    expect_error("input 'x': missing 'data'", body_of({"inputs": [fp32_input(data=None)]}))


@pytest.mark.parametrize("datatype", ["FLOAT32", "fp32", 7, ["FP32"]])
def test_unknown_datatype(datatype: Any) -> None:
    expect_error("input 'x': unknown datatype", body_of({"inputs": [fp32_input(datatype=datatype)]}))


def test_negative_dimension() -> None:
    expect_error(
        r"input 'x': shape \[-1, 4\] has a negative dimension", body_of({"inputs": [fp32_input(shape=[-1, 4])]})
    )


@pytest.mark.parametrize("shape", ["2,2", [2.0, 2], [True, 4], {"a": 1}])
def test_shape_not_a_list_of_integers(shape: Any) -> None:
    expect_error("input 'x': shape must be a list of integers", body_of({"inputs": [fp32_input(shape=shape)]}))


def test_element_count_not_matching_shape() -> None:
    expect_error(
        r"input 'x': shape \[2, 3\] holds 6 elements but data has 4",
        body_of({"inputs": [fp32_input(shape=[2, 3])]}),
    )


def test_bytes_element_count_not_matching_shape() -> None:
    tensor = {"name": "s", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}
    expect_error(r"input 's': shape \[3\] holds 3 elements but data has 2", body_of({"inputs": [tensor]}))


def test_ragged_nested_data() -> None:
    expect_error("input 'x': .*evenly nested list", body_of({"inputs": [fp32_input(data=[[1, 2], [3]])]}))


@pytest.mark.parametrize(
    ("datatype", "data", "problem"),
    [
        ("FP32", ["1.5", 2, 3, 4], "FP32 data must be numbers, got a string '1.5'"),
        ("FP32", [1, None, 3, 4], "FP32 data must be numbers, got null"),
        ("FP32", [True, False, True, False], "FP32 data must be numbers, got a boolean"),
        ("INT32", [1, 2.5, 3, 4], "INT32 data must be integers, got 2.5"),
        ("INT64", [[1, {"a": 1}], [3, 4]], "INT64 data must be numbers, got an object"),
        ("BOOL", [1, 0, 1, 0], "BOOL data must be true or false, got a number 1"),
        ("BYTES", ["a", 2, "c", "d"], "BYTES data must be strings, got a number 2"),
        ("BYTES", {"a": 1}, "BYTES data must be a list of strings, got an object"),
    ],
)
def test_data_of_the_wrong_kind(datatype: str, data: Any, problem: str) -> None:
    expect_error(f"input 'x': {problem}", body_of({"inputs": [fp32_input(datatype=datatype, data=data)]}))


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 256),
        ("UINT8", -1),
        ("INT8", -129),
        ("INT16", 40000),
        ("UINT32", 2**32),
        ("INT64", 2**63),
    ],
)
def test_integer_out_of_range(datatype: str, value: int) -> None:
    tensor = fp32_input(datatype=datatype, data=[1, value, 3, 4])
    expect_error(f"input 'x': value {value} is out of range for {datatype}", body_of({"inputs": [tensor]}))


def test_integer_beyond_64_bits() -> None:
    # JSON parsers read integers beyond 64 bits as floats: the message says integers are needed.
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT64", "data": [18446744073709551616]}]}'
    expect_error("input 'x': UINT64 data must be integers, got 1.8446744073709552e\\+19", body)


@pytest.mark.parametrize("header_length", [-1, 10_000])
def test_header_length_outside_the_body(header_length: int) -> None:
    expect_error(
        f"Inference-Header-Content-Length is {header_length}", body_of({"inputs": [fp32_input()]}), header_length
    )


def test_binary_data_size_not_matching_shape() -> None:
    tensor = {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    body, header_length = binary_request([(tensor, b"\0" * 4)])
    expect_error(r"input 'x': binary data has 4 bytes but shape \[2\] of FP32 needs 8", body, header_length)


def test_binary_data_truncated() -> None:
    tensor = {"name": "x", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
    body, header_length = binary_request([(tensor, b"\0" * 10)])
    expect_error("input 'x': binary_data_size is 16 but only 10 bytes .* remain .*truncated", body, header_length)


def test_binary_data_left_over_after_the_inputs() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    body, header_length = binary_request([(tensor, b"\0" * 6)])
    expect_error("6 bytes of binary data .* add up to 4", body, header_length)


def test_binary_data_size_without_header_length() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    expect_error("input 'x': binary_data_size is 4 but only 0 bytes", body_of({"inputs": [tensor]}))


def test_both_data_and_binary_data_size() -> None:
    tensor = fp32_input(parameters={"binary_data_size": 16})
    body, header_length = binary_request([(tensor, b"\0" * 16)])
    expect_error("input 'x': has both 'data' and a binary_data_size", body, header_length)


@pytest.mark.parametrize("size", [-4, 4.0, "4", True])
def test_binary_data_size_not_a_non_negative_integer(size: Any) -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": size}}
    expect_error("input 'x': binary_data_size must be a non-negative integer", *binary_request([(tensor, b"")]))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (struct.pack("<I", 10) + b"abcd", "element 0 declares 10 bytes but only 4 remain"),
        (length_prefixed(b"abc") + b"\x01\x00", "too few|truncated length prefix"),
        (length_prefixed(b"a", b"b") + b"xy", "2 bytes left over"),
        (length_prefixed(b"a", b"b", b"c"), "3 elements|left over"),
    ],
)
def test_malformed_bytes_length_prefixes(raw: bytes, problem: str) -> None:
    tensor = {"name": "w", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    expect_error(f"input 'w': .*({problem})", *binary_request([(tensor, raw)]))


def test_duplicate_input_names() -> None:
    expect_error("same input more than once", body_of({"inputs": [fp32_input(), fp32_input()]}))


def test_id_not_a_string() -> None:
    expect_error("'id' must be a string", body_of({"id": 5, "inputs": [fp32_input()]}))


@pytest.mark.parametrize("parameters", [[1], {"nested": {"a": 1}}, {"list": [1]}])
def test_parameters_not_an_object_of_scalars(parameters: Any) -> None:
    expect_error("request: .*parameter", body_of({"parameters": parameters, "inputs": [fp32_input()]}))


def test_outputs_malformed() -> None:
    expect_error(
        r"outputs\[0\] must be an object with a string 'name'", body_of({"inputs": [fp32_input()], "outputs": [{}]})
    )


def test_output_binary_data_not_a_boolean() -> None:
    document = {"inputs": [fp32_input()], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}
    expect_error("output 'y': parameter binary_data must be true or false", body_of(document))


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_data_nested_too_deeply(datatype: str) -> None:
    data = "[" * 1000 + '"a"' + "]" * 1000
    body = f'{{"inputs": [{{"name": "x", "shape": [1], "datatype": "{datatype}", "data": {data}}}]}}'
    expect_error("input 'x': .*(too deeply|64 levels deep)", body.encode())


# ------------------------------------------------------------------------ fuzz

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
FIELD_VALUES = {
    "name": st.sampled_from(["x", "y"]) | JSON_VALUES,
    "shape": st.lists(st.integers(-1, 3), max_size=3) | JSON_VALUES,
    "datatype": st.sampled_from(["FP32", "INT8", "UINT64", "BOOL", "BYTES", "FP16"]) | JSON_VALUES,
    "data": st.lists(st.integers(-300, 300) | st.booleans() | st.text(max_size=2), max_size=6) | JSON_VALUES,
    "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-2, 40)}) | JSON_VALUES,
}
FUZZ_INPUTS = st.lists(
    st.fixed_dictionaries({}, optional=FIELD_VALUES) | JSON_VALUES,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    inputs=FUZZ_INPUTS,
    extra=st.fixed_dictionaries({}, optional={"id": JSON_VALUES, "parameters": JSON_VALUES, "outputs": JSON_VALUES}),
    binary=st.binary(max_size=40),
    mode=st.sampled_from(["exact", "absent", "arbitrary"]),
    cut=st.integers(-5, 400),
)
def test_arbitrary_documents_raise_only_invalid_argument(
    inputs: Any, extra: dict[str, Any], binary: bytes, mode: str, cut: int
) -> None:
    header = orjson.dumps({"inputs": inputs, **extra})
    header_length = {"exact": len(header), "absent": None, "arbitrary": cut}[mode]
    try:
        request = decode_infer_request(header + binary, header_length, "m", None)
    except InvalidArgumentError:
        return
    for tensor in request.inputs:
        assert tensor.data.shape == tensor.shape


def test_admit_sees_the_parameters_before_any_tensor_is_decoded() -> None:
    """A transport's admission check refuses a request at the cost of its parse: it runs before the inputs are
    looked at, so a request it refuses is refused even with tensors that would not decode."""
    seen: list[dict[str, Any]] = []

    def refuse(parameters: Any) -> None:
        seen.append(dict(parameters))
        raise InvalidArgumentError("refused by admission")

    broken = body_of({"inputs": [fp32_input(data=[1, 2])], "parameters": {"latency_slo_ms": 5}})  # 2 of 4 values
    with pytest.raises(InvalidArgumentError, match="refused by admission"):
        decode_infer_request(broken, None, "m", None, refuse)
    assert seen == [{"latency_slo_ms": 5}]
    with pytest.raises(InvalidArgumentError, match="4 elements but data has 2"):  # without it, the tensor is at fault
        decode_infer_request(broken, None, "m", None)
    slo = Slo(latency_ms=25.0, min_accuracy=0.9)
    admitted = decode_infer_request(body_of({"inputs": [fp32_input()]}), None, "m", None, lambda _: slo)
    assert admitted.slo is slo  # what the check made of the parameters, for the data plane
    assert decode({"inputs": [fp32_input()]}).slo is None

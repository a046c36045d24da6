"""export.protocol: KServe v2 / Triton binary-data and v1 codecs, checked against tritonclient's own."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from export.protocol import (
    ProtocolError,
    RequestedOutput,
    datatype_of,
    deserialize_bytes,
    encode_infer_response,
    parse_infer_request,
    parse_v1_request,
    serialize_bytes,
)

httpclient = pytest.importorskip("tritonclient.http")
triton_utils = pytest.importorskip("tritonclient.utils")


def triton_body(arrays: dict, binary: bool, outputs=None, request_id=""):
    """A request body exactly as tritonclient.http would send it."""
    inputs = []
    for name, array in arrays.items():
        datatype = triton_utils.np_to_triton_dtype(array.dtype)
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    requested = None
    if outputs is not None:
        requested = [httpclient.InferRequestedOutput(name, binary_data=flag) for name, flag in outputs]
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=requested, request_id=request_id)


ARRAYS = {
    "ints": np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
    "floats": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    "halves": np.array([[0.5, -2.0]], dtype=np.float16),
    "doubles": np.array([1e300, -0.0], dtype=np.float64),
    "longs": np.array([2**40, -(2**40)], dtype=np.int64),
    "bytes": np.array([b"ok", b"", "héllo".encode(), b"\x00\xff"], dtype=np.object_),
    "flags": np.array([[True], [False]]),
    "small": np.array([255, 0], dtype=np.uint8),
}


@pytest.mark.parametrize("binary", [True, False])
def test_requests_from_tritonclient_decode_exactly(binary):
    arrays = dict(ARRAYS)
    if not binary:  # JSON carries BYTES as UTF-8 strings only
        arrays["bytes"] = np.array([b"ok", b"", "héllo".encode()], dtype=np.object_)
    body, json_size = triton_body(arrays, binary, outputs=[("x", True), ("y", False)], request_id="r-7")
    assert (json_size is not None) == binary
    request = parse_infer_request(body, json_size)
    assert request.id == "r-7"
    assert request.outputs == [RequestedOutput("x", True), RequestedOutput("y", False)]
    assert list(request.inputs) == list(arrays)
    for name, expected in arrays.items():
        got = request.inputs[name]
        assert got.shape == expected.shape, name
        if expected.dtype == object:
            assert list(got.ravel()) == list(expected.ravel()), name
        else:
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected, err_msg=name)
        assert request.datatypes[name] == triton_utils.np_to_triton_dtype(expected.dtype)


def test_without_outputs_tritonclient_asks_for_binary_outputs():
    body, json_size = triton_body({"x": np.ones((1, 2), np.float32)}, True)
    request = parse_infer_request(body, json_size)
    assert request.outputs is None and request.binary_output is True and request.id is None


def test_nested_and_flat_json_data_are_the_same():
    def body(data):
        return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": data}]}).encode()

    flat = parse_infer_request(body([1, 2, 3, 4.5])).inputs["x"]
    nested = parse_infer_request(body([[1, 2], [3, 4.5]])).inputs["x"]
    np.testing.assert_array_equal(flat, np.array([[1, 2], [3, 4.5]], np.float32))
    np.testing.assert_array_equal(nested, flat)
    assert nested.dtype == np.float32


@pytest.mark.parametrize("binary_outputs", [set(), {"probability", "label"}, {"label"}])
def test_responses_decode_in_tritonclient(binary_outputs):
    outputs = {
        "probability": np.array([[0.25], [0.75]], dtype=np.float32),
        "attention": np.arange(8, dtype=np.float32).reshape(2, 2, 2) / 7,
        "label": np.array(["negative", "positivé"], dtype=object),
        "ids": np.array([[1, 2, 0]], dtype=np.int64),
    }
    body, header = encode_infer_response("m", outputs, request_id="abc", binary=binary_outputs)
    assert (header is None) == (not binary_outputs)
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header)
    response = result.get_response()
    assert response["model_name"] == "m" and response["id"] == "abc"
    assert [o["name"] for o in response["outputs"]] == list(outputs)
    for name, expected in outputs.items():
        got = result.as_numpy(name)
        assert got.shape == expected.shape, name
        if expected.dtype == object:
            decoded = [g.decode() if isinstance(g, bytes) else g for g in got.ravel()]
            assert decoded == list(expected.ravel())
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


@given(st.lists(st.binary(max_size=40), max_size=12))
def test_bytes_serialization_matches_tritonclient(items):
    reference = triton_utils.serialize_byte_tensor(np.array(items, dtype=np.object_))
    expected = reference.item() if reference.size else b""
    assert serialize_bytes(items) == expected
    assert deserialize_bytes(expected, len(items)) == items
    assert list(triton_utils.deserialize_bytes_tensor(serialize_bytes(items))) == items


def test_bytes_layout_is_four_byte_little_endian_lengths():
    assert serialize_bytes([b"ab", "é"]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "é".encode()


def _tensor(**fields):
    tensor = {"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}
    tensor.update(fields)
    return tensor


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (json.dumps({"inputs": [_tensor(datatype="INT33")]}), "unknown datatype"),
        (json.dumps({"inputs": [_tensor(shape=[3])]}), "needs 3 elements, got 2"),
        (json.dumps({"inputs": [_tensor(shape=[-1])]}), "non-negative integers"),
        (json.dumps({"inputs": [_tensor(data=[1.5, 2])]}), "needs integers"),
        (json.dumps({"inputs": [_tensor(data=["a", "b"])]}), "needs integers"),
        (json.dumps({"inputs": [_tensor(data=[[1], [2, 3]], shape=[3])]}), "not a regular array"),
        (json.dumps({"inputs": [_tensor(data=[2**31, 0])]}), "outside the range of INT32"),
        (json.dumps({"inputs": [_tensor(datatype="BYTES", data=[1, 2])]}), "JSON strings"),
        (json.dumps({"inputs": [_tensor(datatype="BOOL", data=[1, 0])]}), "needs booleans"),
        (json.dumps({"inputs": [_tensor(), _tensor()]}), "given twice"),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}), "neither 'data'"),
        (json.dumps({"inputs": [_tensor()], "outputs": [{"name": "y"}, {"name": "y"}]}), "requested twice"),
        (json.dumps({"inputs": [_tensor()], "id": 5}), "'id' must be a string"),
        (json.dumps({"inputs": [_tensor()], "parameters": {"binary_data_output": "yes"}}), "true or false"),
    ],
)
def test_malformed_requests_get_one_line(body, message):
    with pytest.raises(ProtocolError, match=message) as caught:
        parse_infer_request(body.encode() if isinstance(body, str) else body)
    assert "\n" not in str(caught.value)


def _binary(tensor: dict, data: bytes, header_length_delta=0):
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + data, len(header) + header_length_delta


@pytest.mark.parametrize(
    "tensor, data, message",
    [
        ({"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}, b"\0" * 4, "needs 8 bytes, got 4"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}, b"\0" * 4, "past the end"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}, b"\0" * 6, "no input claims"),
        ({"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}, struct.pack("<I", 9) + b"ab", "runs past"),
        ({"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 3}}, b"abc", "inside a BYTES length"),
        ({"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 12}}, serialize_bytes([b"a", b"bcd"]), "more than the 1"),
    ],
)
def test_malformed_binary_data(tensor, data, message):
    body, length = _binary(tensor, data)
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body, length)


def test_header_length_beyond_the_body():
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length is 99"):
        parse_infer_request(b"{}", 99)


def test_datatype_names():
    assert [datatype_of(t) for t in (np.float32, np.int32, np.int64, np.bool_, np.uint8, np.float16)] == [
        "FP32", "INT32", "INT64", "BOOL", "UINT8", "FP16",
    ]
    assert datatype_of(np.array(["a"]).dtype) == datatype_of(object) == "BYTES"
    with pytest.raises(ValueError):
        datatype_of(np.complex64)


def test_v1_instances():
    assert parse_v1_request(b'{"instances": ["a", "b"]}') == ["a", "b"]
    for body, message in [(b"nope", "not valid JSON"), (b'{"instances": []}', "non-empty"), (b'{"inputs": [1]}', "non-empty")]:
        with pytest.raises(ProtocolError, match=message):
            parse_v1_request(body)


_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_]


@st.composite
def arrays(draw):
    from hypothesis.extra import numpy as hnp

    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    elements = None
    if dtype.kind == "f":  # JSON has no NaN or infinity in tritonclient's encoder
        elements = st.floats(-1e4, 1e4, width=dtype.itemsize * 8, allow_nan=False)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@given(arrays(), st.booleans())
def test_any_tensor_round_trips_through_tritonclient(array, binary):
    body, json_size = triton_body({"x": array}, binary)
    request = parse_infer_request(body, json_size)
    got = request.inputs["x"]
    assert got.shape == array.shape and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)
    for as_binary in (set(), {"x"}):
        out, header = encode_infer_response("m", {"x": array}, binary=as_binary)
        back = httpclient.InferenceServerClient.parse_response_body(out, header_length=header).as_numpy("x")
        assert back.shape == array.shape
        np.testing.assert_array_equal(back.astype(array.dtype), array)

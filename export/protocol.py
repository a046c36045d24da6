"""The wire formats of `export.serve`, as pure functions: KServe v2 (with Triton's binary data) and v1.

Nothing here knows about a model, a server or a socket: bytes in, numpy
arrays out, and back. A malformed request raises `ProtocolError`, whose
one-line message the server sends with status 400.

KServe v2 / Open Inference Protocol over HTTP, as Triton speaks it:

* A JSON tensor is ``{"name", "datatype", "shape", "data"}``; ``data`` is
  row-major, flat or nested. BYTES elements are JSON strings (UTF-8).
* Triton's binary-data extension (what ``tritonclient.http`` sends by
  default): the body is the JSON header followed by raw tensor bytes, and
  the header ``Inference-Header-Content-Length`` gives the JSON's length.
  An input with ``"parameters": {"binary_data_size": N}`` takes the next N
  bytes instead of ``data``: fixed-size types in little-endian row-major
  order, BYTES as elements each prefixed by its 4-byte little-endian length.
  An output is sent the same way when the request asks for it with
  ``"parameters": {"binary_data": true}`` on the output, or with
  ``"binary_data_output": true`` in the request's parameters.

KServe v1: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "HTTPError",
    "InferRequest",
    "ProtocolError",
    "RequestedOutput",
    "array_from_binary",
    "array_from_data",
    "binary_data",
    "datatype_of",
    "deserialize_bytes",
    "encode_infer_response",
    "parse_infer_request",
    "parse_v1_request",
    "serialize_bytes",
]

#: The HTTP header giving the length of the JSON part of a binary body.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: KServe v2 datatype -> numpy dtype (little-endian, as on the wire).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

_LENGTH = struct.Struct("<I")


class ProtocolError(ValueError):
    """A request the protocol cannot accept; the message is one line for the client."""


class HTTPError(Exception):
    """An error answered with HTTP ``status`` (and its gRPC code) and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def datatype_of(dtype: np.dtype | str) -> str:
    """The KServe v2 datatype of a numpy dtype (``str``/``bytes``/object arrays are BYTES).

    Raises:
        ValueError: a dtype the protocol has no name for.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    for name, candidate in DATATYPES.items():
        if candidate == dtype.newbyteorder("<"):
            return name
    raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype")


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request names: its ``name``, and whether to send it as binary data."""

    name: str
    binary: bool = False


@dataclass
class InferRequest:
    """A decoded v2 inference request.

    Attributes:
        id: the request's ``id``, echoed in the response (None when absent).
        inputs: name -> array of the declared shape; BYTES inputs are object
            arrays of ``bytes``.
        datatypes: name -> the declared v2 datatype of each input.
        outputs: the requested outputs in order, or None for all of them.
        binary_output: send outputs that are not listed (all of them, when
            ``outputs`` is None) as binary data.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False


def serialize_bytes(items: Sequence[bytes | str]) -> bytes:
    """BYTES elements as Triton sends them: each prefixed by its length, 4-byte little-endian."""
    parts = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str = "tensor") -> list[bytes]:
    """Split ``count`` length-prefixed BYTES elements; the buffer must hold exactly those.

    Raises:
        ProtocolError: a length runs past the end, or bytes are left over.
    """
    buffer = memoryview(buffer)
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(buffer):
            raise ProtocolError(f"input '{name}': binary data ends inside a BYTES length prefix")
        (size,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + size > len(buffer):
            raise ProtocolError(f"input '{name}': a BYTES element of {size} bytes runs past the binary data")
        items.append(bytes(buffer[offset : offset + size]))
        offset += size
    if offset != len(buffer):
        raise ProtocolError(f"input '{name}': binary data holds more than the {count} BYTES elements of its shape")
    return items


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _shape(value, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers, got {json.dumps(value)[:80]}")
    return tuple(value)


def array_from_data(data, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Input ``name``'s values (a list, flat or nested, row-major: JSON's ``data``) as an array of ``shape``.

    Raises:
        ProtocolError: values that do not fit the datatype or the shape.
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = list(_flatten(data, name))
        if not all(isinstance(item, str) for item in flat):
            raise ProtocolError(f"input '{name}': BYTES data must be JSON strings")
        if len(flat) != count:
            raise ProtocolError(f"input '{name}': shape {list(shape)} needs {count} elements, got {len(flat)}")
        array = np.empty(count, dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
        return array.reshape(shape)
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError):
        raise ProtocolError(f"input '{name}': data is not a regular array of numbers") from None
    kinds = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}.get(datatype, "iu")
    if array.dtype.kind not in kinds and array.size:  # numpy makes [] float64
        what = {"b": "booleans", "biuf": "numbers"}.get(kinds, "integers")
        raise ProtocolError(f"input '{name}': datatype {datatype} needs {what} in data")
    if array.size != count:
        raise ProtocolError(f"input '{name}': shape {list(shape)} needs {count} elements, got {array.size}")
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(f"input '{name}': a value is outside the range of {datatype}")
    return array.astype(dtype).reshape(shape)


def _flatten(data, name: str):
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item, name)
    else:
        yield data


def array_from_binary(buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Input ``name``'s raw bytes (Triton's binary data, gRPC's raw contents) as an array of ``shape``.

    Raises:
        ProtocolError: bytes that do not fit the datatype and the shape.
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = deserialize_bytes(buffer, count, name)
        return array.reshape(shape)
    dtype = DATATYPES[datatype]
    if len(buffer) != count * dtype.itemsize:
        raise ProtocolError(
            f"input '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, got {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _flag(parameters: dict, key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: parameter '{key}' must be true or false")
    return value


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode a v2 ``POST .../infer`` body.

    Args:
        body: the whole request body.
        header_length: the value of the ``Inference-Header-Content-Length``
            header: the JSON is the first ``header_length`` bytes and binary
            tensor data follows. None when the body is JSON only.

    Returns:
        The request, every input checked against its own declared datatype,
        shape and element count (not yet against a model).

    Raises:
        ProtocolError: malformed JSON, an unknown datatype, data that does
            not fit its shape, a duplicated input or output, binary data of
            the wrong size.
    """
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif not 0 <= header_length <= len(view):
        raise ProtocolError(f"{HEADER_LENGTH} is {header_length} but the body has {len(view)} bytes")
    try:
        message = json.loads(bytes(view[:header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the request is not valid JSON: {error}") from None
    message = _object(message, "the request")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = _object(message.get("parameters", {}), "'parameters'")
    raw_inputs = message.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")

    binary = view[header_length:]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for raw in raw_inputs:
        raw = _object(raw, "each input")
        name = raw.get("name")
        if not isinstance(name, str):
            raise ProtocolError("each input needs a 'name' string")
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        datatype = raw.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
        shape = _shape(raw.get("shape"), name)
        input_parameters = _object(raw.get("parameters", {}), f"input '{name}': 'parameters'")
        size = input_parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in raw:
                raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise ProtocolError(f"input '{name}': binary_data_size {size} runs past the end of the body")
            inputs[name] = array_from_binary(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in raw:
            inputs[name] = array_from_data(raw["data"], datatype, shape, name)
        else:
            raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
        datatypes[name] = datatype
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes of binary data that no input claims")

    outputs = None
    if "outputs" in message:
        raw_outputs = message["outputs"]
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for raw in raw_outputs:
            raw = _object(raw, "each output")
            name = raw.get("name")
            if not isinstance(name, str):
                raise ProtocolError("each output needs a 'name' string")
            if any(output.name == name for output in outputs):
                raise ProtocolError(f"output '{name}' is requested twice")
            output_parameters = _object(raw.get("parameters", {}), f"output '{name}': 'parameters'")
            outputs.append(RequestedOutput(name, _flag(output_parameters, "binary_data", f"output '{name}'")))
    return InferRequest(
        id=request_id,
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        binary_output=_flag(parameters, "binary_data_output", "the request"),
    )


def _json_data(array: np.ndarray) -> list:
    if array.dtype.kind in "OSU":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    return array.ravel().tolist()


def binary_data(array: np.ndarray) -> bytes:
    """An array's raw bytes as Triton sends them: little-endian row-major, BYTES length-prefixed."""
    if array.dtype.kind in "OSU":
        return serialize_bytes(list(array.ravel()))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_infer_response(
    model_name: str,
    outputs: Mapping[str, np.ndarray],
    *,
    request_id: str | None = None,
    binary: Container[str] = (),
    model_version: str = "1",
) -> tuple[bytes, int | None]:
    """Encode a v2 inference response.

    Args:
        model_name: the model that answered.
        outputs: name -> array, in the order to send them. Arrays of
            ``str``/``bytes`` are sent as BYTES.
        request_id: echoed as ``id`` when given.
        binary: names of the outputs to send as binary data.
        model_version: the ``model_version`` field.

    Returns:
        ``(body, header_length)``: the JSON alone and None when nothing is
        binary; else the JSON followed by the binary data, and the JSON's
        length for the ``Inference-Header-Content-Length`` header.
    """
    tensors, chunks = [], []
    for name, array in outputs.items():
        array = np.asarray(array)
        tensor = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if name in binary:
            chunk = binary_data(array)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = _json_data(array)
        tensors.append(tensor)
    message = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        message["id"] = request_id
    message["outputs"] = tensors
    header = json.dumps(message, separators=(",", ":"), allow_nan=True).encode("utf-8")
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def parse_v1_request(body: bytes) -> list:
    """The ``instances`` of a KServe v1 ``:predict`` body.

    Raises:
        ProtocolError: malformed JSON, or no non-empty ``instances`` list.
    """
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the request is not valid JSON: {error}") from None
    message = _object(message, "the request")
    instances = message.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ProtocolError("the request needs a non-empty 'instances' list")
    return instances

"""`export.serve`'s gRPC side: the KServe v2 / Triton service ``inference.GRPCInferenceService``.

What ``tritonclient.grpc`` and KServe's gRPC clients speak: ServerLive,
ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig, ModelInfer (typed
``contents`` or ``raw_input_contents`` in; ``raw_output_contents`` out, as
Triton answers) and the repository RPCs (RepositoryIndex,
RepositoryModelLoad, RepositoryModelUnload). A request reaches the same
`export.serve.ModelRegistry` and the same micro-batchers as over HTTP, so
the answers are the same; errors map to gRPC status codes with the HTTP
side's one-line messages (400 INVALID_ARGUMENT, 404 NOT_FOUND, 409
FAILED_PRECONDITION, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE), and a message
over ``--max-body`` is refused by gRPC itself with RESOURCE_EXHAUSTED.

The messages and the servicer's base class are ``tritonclient``'s generated
code for Triton's public ``grpc_service.proto`` (``tritonclient.grpc.
service_pb2`` and ``service_pb2_grpc``, installed with the ``serve`` extra),
not a copy of our own: protobuf keeps one registry of message types per
process, and a second build of the same ``inference`` package would make
any process that also imports ``tritonclient.grpc`` (a client in the same
program, our tests) fail at import. Triton's team maintains that package
against the proto the server speaks.
"""

from __future__ import annotations

import logging
import math
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from export.cli import one_line
from export.protocol import (
    DATATYPES,
    HTTPError,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    array_from_binary,
    array_from_data,
    binary_data,
    datatype_of,
)

__all__ = ["encode_model_infer", "parse_model_infer", "start_grpc"]

log = logging.getLogger("export.serve")

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

#: The ``InferTensorContents`` field holding each datatype's typed values
#: (FP16 has none: it travels as raw contents only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_model_infer(request: pb.ModelInferRequest) -> InferRequest:
    """A ``ModelInferRequest`` as the request `export.serve.ServedModel.infer` takes.

    Raises:
        ProtocolError: an unknown datatype, a negative dimension, contents
            that do not fit their shape, raw contents for only some inputs,
            a repeated input or output.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one per input")
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
        shape = tuple(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise ProtocolError(f"input '{name}': shape must be non-negative, got {list(shape)}")
        if raw:
            inputs[name] = array_from_binary(raw[index], datatype, shape, name)
        elif datatype == "BYTES":
            values = tensor.contents.bytes_contents
            if len(values) != math.prod(shape):
                raise ProtocolError(f"input '{name}': shape {list(shape)} needs {math.prod(shape)} elements, got {len(values)}")
            array = np.empty(len(values), dtype=object)
            array[:] = list(values)
            inputs[name] = array.reshape(shape)
        elif datatype == "FP16":
            raise ProtocolError(f"input '{name}': FP16 has no typed contents; send it in raw_input_contents")
        else:
            inputs[name] = array_from_data(list(getattr(tensor.contents, _CONTENTS[datatype])), datatype, shape, name)
        datatypes[name] = datatype
    outputs = None
    if request.outputs:
        outputs = []
        for output in request.outputs:
            if any(known.name == output.name for known in outputs):
                raise ProtocolError(f"output '{output.name}' is requested twice")
            outputs.append(RequestedOutput(output.name))
    return InferRequest(id=request.id or None, inputs=inputs, datatypes=datatypes, outputs=outputs)


def encode_model_infer(
    model_name: str, model_version: str, outputs: dict[str, np.ndarray], request_id: str | None = None
) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` for ``outputs``, in order, as raw contents (as Triton answers)."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    for name, array in outputs.items():
        array = np.asarray(array)
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(binary_data(array))
    return response


def _status(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and one-line message answering ``error``."""
    if isinstance(error, HTTPError):
        return _CODES.get(error.status, grpc.StatusCode.INTERNAL), one_line(error)
    if isinstance(error, ProtocolError):
        return grpc.StatusCode.INVALID_ARGUMENT, one_line(error)
    log.error("error answering a gRPC request", exc_info=error)  # a bug or a runtime failure: keep serving
    return grpc.StatusCode.INTERNAL, f"internal error: {one_line(error)}"


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs, over the server's `ModelRegistry` and `_Metrics`."""

    def __init__(self, registry, metrics, server_version: str) -> None:
        self.registry = registry
        self.metrics = metrics
        self.server_version = server_version

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="keras-attn", version=self.server_version, extensions=["model_repository"])

    async def ModelReady(self, request, context):
        try:
            self.registry.get(request.name, request.version or None)
        except HTTPError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        try:
            data = self.registry.metadata(self.registry.get(request.name, request.version or None))
        except HTTPError as error:
            await context.abort(*_status(error))
        tensors = lambda specs: [pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in specs]  # noqa: E731
        return pb.ModelMetadataResponse(
            name=data["name"], versions=data["versions"], platform=data["platform"],
            inputs=tensors(data["inputs"]), outputs=tensors(data["outputs"]),
        )

    async def ModelConfig(self, request, context):
        from google.protobuf import json_format
        from tritonclient.grpc import model_config_pb2

        try:
            config = self.registry.get(request.name, request.version or None).triton_config()
        except HTTPError as error:
            await context.abort(*_status(error))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelInfer(self, request, context):
        started, model, status = time.perf_counter(), None, grpc.StatusCode.OK
        try:
            model = self.registry.get(request.model_name, request.model_version or None)
            model.in_flight += 1
            parsed = parse_model_infer(request)
            outputs = await model.infer(parsed)
            return encode_model_infer(model.name, model.version, outputs, parsed.id)
        except Exception as error:
            status, message = _status(error)
            await context.abort(status, message)
        finally:
            if model is not None:
                model.in_flight -= 1
            label = request.model_name if model is not None else ""
            self.metrics.count(label, "infer", "grpc", status.name, started)

    async def RepositoryIndex(self, request, context):
        entries = self.registry.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries])

    async def RepositoryModelLoad(self, request, context):
        return await self._repository(self.registry.load, request.model_name, "load", context, pb.RepositoryModelLoadResponse)

    async def RepositoryModelUnload(self, request, context):
        return await self._repository(self.registry.unload, request.model_name, "unload", context, pb.RepositoryModelUnloadResponse)

    async def _repository(self, action, name: str, endpoint: str, context, response):
        started, status = time.perf_counter(), grpc.StatusCode.OK
        try:
            await action(name)
            return response()
        except HTTPError as error:
            status, message = _status(error)
            await context.abort(status, message)
        finally:
            self.metrics.count(name, endpoint, "grpc", status.name, started)


async def start_grpc(registry, metrics, settings, server_version: str) -> grpc.aio.Server:
    """Start the service on ``settings.grpc_host:grpc_port`` on the running event loop.

    Args:
        registry: the server's `export.serve.ModelRegistry`.
        metrics: its Prometheus series.
        settings: its `export.serve.Settings` (the address, ``max_body``).
        server_version: what ServerMetadata says.

    Raises:
        OSError: the port cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),  # with the port `export.serve.reserve_port` holds, and other workers
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(registry, metrics, server_version), server)
    host = f"[{settings.grpc_host}]" if ":" in settings.grpc_host else settings.grpc_host
    try:
        bound = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as error:
        raise OSError(f"cannot listen on {host}:{settings.grpc_port} for gRPC: {error}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{settings.grpc_port} for gRPC")
    await server.start()
    return server

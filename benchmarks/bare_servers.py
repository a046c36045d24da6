"""The floors of the peer comparison: about the least a Python server spends on one request here.

    python -m benchmarks.bare_servers http MODEL.onnx   # httptools on uvloop
    python -m benchmarks.bare_servers grpc MODEL.onnx   # grpc.aio, Triton's ModelInfer

Each answers what `benchmarks.serve_load` sends its peers (one row of int32
ids a request: v2 JSON over HTTP, a ModelInferRequest with raw contents over
gRPC) with ``probability`` from one ``session.run`` on a session opened as
MLServer's runtime opens it (`open_like_mlserver`), and does nothing else: no
checks, no batching, no metrics, no logs, no routes, no timeouts; a bad
request only ends its connection or call. What a real server spends beyond
such a floor is its own; what the floor spends is the protocol stack's, the
model's and the machine's (a call after the loop has slept costs more than
one back to back: its caches are cold).

Each prints ``listening on 127.0.0.1:PORT`` on stderr (port 0 picks one) and
serves until SIGTERM. numpy, onnxruntime and the serve extra only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import numpy as np
import onnxruntime

__all__ = ["open_like_mlserver", "main"]

_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def open_like_mlserver(path: str) -> onnxruntime.InferenceSession:
    """An `InferenceSession` opened as `benchmarks/mlserver_onnx.py`'s ``load()`` opens it: one intra-op thread, no spinning."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _BareHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive: parse with httptools, answer each request when its body is whole."""

    def __init__(self, probability, model: str) -> None:
        import httptools

        self._probability, self._model = probability, model
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception:  # a floor: no error answers
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        tensor = json.loads(b"".join(self._body))["inputs"][0]
        self._body.clear()
        ids = np.asarray(tensor["data"], dtype=np.int32).reshape(tensor["shape"])
        probability = self._probability(ids)
        content = json.dumps({"model_name": self._model, "outputs": [{
            "name": "probability", "datatype": "FP32", "shape": list(probability.shape), "data": probability.ravel().tolist(),
        }]}).encode()
        self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                              % (len(content), content))


async def _serve_http(probability, model: str, port: int, stop: asyncio.Event) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _BareHttp(probability, model), "127.0.0.1", port)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


async def _serve_grpc(probability, model: str, port: int, stop: asyncio.Event) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    async def model_infer(request, context):
        tensor = request.inputs[0]
        ids = np.frombuffer(request.raw_input_contents[0], dtype="<i4").reshape(tuple(tensor.shape))
        scores = probability(ids)
        response = service_pb2.ModelInferResponse(model_name=model)
        response.outputs.add(name="probability", datatype="FP32", shape=list(scores.shape))
        response.raw_output_contents.append(scores.astype("<f4").tobytes())
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        model_infer, request_deserializer=service_pb2.ModelInferRequest.FromString,
        response_serializer=service_pb2.ModelInferResponse.SerializeToString,
    )
    service, method = _MODEL_INFER[1:].split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare_servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=("http", "grpc"))
    parser.add_argument("model", metavar="MODEL.onnx", help="a model with an int32 ids input and a 'probability' output")
    parser.add_argument("--port", type=int, default=0, help="the loopback port (default: 0, a free one)")
    args = parser.parse_args(argv)
    session = open_like_mlserver(args.model)
    feed = session.get_inputs()[0].name
    model = Path(args.model).stem

    def probability(ids: np.ndarray) -> np.ndarray:
        return session.run(["probability"], {feed: ids})[0]

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await (_serve_http if args.protocol == "http" else _serve_grpc)(probability, model, args.port, stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

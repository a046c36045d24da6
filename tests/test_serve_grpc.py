"""export.serve's gRPC service against a real client: tritonclient.grpc, and the raw stub for typed contents.

Every answer is checked against a plain onnxruntime session on the same
file (`serve_models.Reference`) and against the HTTP side's answer.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from serve_models import Reference, pair, pair_feeds, running_server, sentiment, start_server  # noqa: F401 - fixtures

httpx = pytest.importorskip("httpx")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from export.serve import Settings, create_app, reserve_port  # noqa: E402

pytestmark = pytest.mark.slow  # every test here talks to a running server

TEXTS = ["What a great film, I loved it", "dull and boring", "", "zyxxq unknownword"]


@pytest.fixture(scope="module")
def refs(sentiment, pair):
    return {"sentiment": Reference(sentiment), "pair": Reference(pair)}


@pytest.fixture(scope="module")
def servers(sentiment, pair):
    """(HTTP address, gRPC address) of one app serving both models, with a 64 KiB message limit."""
    reservation = reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    settings = Settings(
        models=(str(sentiment), str(pair)), max_batch=64, max_delay_ms=30, max_body=64 * 1024, grpc_port=port
    )
    with running_server(create_app(settings)) as http_address:
        yield http_address, f"127.0.0.1:{port}"
    reservation.close()


@pytest.fixture
def client(servers):
    with grpcclient.InferenceServerClient(servers[1]) as client:
        yield client


@pytest.fixture
def http(servers):
    with httpx.Client(base_url=f"http://{servers[0]}", timeout=30) as client:
        yield client


@pytest.fixture
def stub(servers):
    with grpc.insecure_channel(servers[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _texts(texts, shape=None):
    tensor = grpcclient.InferInput("text", shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(shape or [len(texts)]))
    return tensor


def _tensor(name, value, datatype):
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sentiment") and client.is_model_ready("pair", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("pair", "2")
    assert client.get_server_metadata().name == "keras-attn"
    metadata = client.get_model_metadata("pair", as_json=True)
    assert metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata["inputs"]} == {
        ("a", "FP32", ("-1", "3")),
        ("b", "FP32", ("-1", "2")),
    }


@pytest.mark.parametrize("shape", ["[n]", "[n, 1]"])
def test_text_in_labels_and_probabilities_out(client, refs, shape):
    tensor = _texts(TEXTS, None if shape == "[n]" else [len(TEXTS), 1])
    outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probability")]
    result = client.infer("sentiment", [tensor], outputs=outputs, request_id="r-7")
    expected = refs["sentiment"].texts(TEXTS)
    assert [x.decode() for x in result.as_numpy("label")] == list(expected["label"])
    close(result.as_numpy("probability"), expected["probability"])
    response = result.get_response()
    assert response.id == "r-7" and [o.name for o in response.outputs] == ["label", "probability"]


def test_token_ids_and_every_output_by_default(client, refs):
    ids = refs["sentiment"].encoder.encode(TEXTS)
    result = client.infer("sentiment", [_tensor("tokens", ids, "INT32")])
    expected = refs["sentiment"].texts(TEXTS)
    assert {o.name for o in result.get_response().outputs} == {"attention", "probability", "label"}
    close(result.as_numpy("probability"), expected["probability"])
    close(result.as_numpy("attention"), expected["attention"])


def test_float_model_equals_http_and_onnxruntime(client, http, refs):
    feeds = pair_feeds(5, seed=3)
    result = client.infer("pair", [_tensor(n, v, "FP32") for n, v in feeds.items()])
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
    answer = {o["name"]: o for o in http.post("/v2/models/pair/infer", json=body).json()["outputs"]}
    for name, value in refs["pair"].run(feeds).items():
        close(result.as_numpy(name), value)
        close(result.as_numpy(name), np.array(answer[name]["data"]).reshape(answer[name]["shape"]))


def test_typed_contents_equal_raw_contents(stub, refs):
    ids = refs["sentiment"].encoder.encode(TEXTS)
    request = service_pb2.ModelInferRequest(model_name="sentiment", id="typed")
    tensor = request.inputs.add(name="tokens", datatype="INT32", shape=ids.shape)
    tensor.contents.int_contents.extend(ids.ravel().tolist())
    request.outputs.add(name="probability")
    response = stub.ModelInfer(request)
    assert response.id == "typed" and response.model_version == "1"
    (output,) = response.outputs
    assert output.name == "probability" and output.datatype == "FP32" and list(output.shape) == [len(TEXTS), 1]
    value = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(output.shape)
    close(value, refs["sentiment"].texts(TEXTS)["probability"])

    text = service_pb2.ModelInferRequest(model_name="sentiment")
    tensor = text.inputs.add(name="text", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"great film", b"awful film"])
    text.outputs.add(name="label")
    labels = stub.ModelInfer(text).raw_output_contents[0]
    assert labels == b"".join(len(x).to_bytes(4, "little") + x for x in (b"positive", b"negative"))


def _code(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_errors_map_to_status_codes_with_one_line_and_the_server_goes_on(client, stub, refs):
    ids = refs["sentiment"].encoder.encode(["fine"])
    cases = {
        "unknown model": (grpc.StatusCode.NOT_FOUND, "unknown model 'nope'", "nope", "", [("tokens", "INT32", [1, ids.shape[1]], ids)]),
        "unknown version": (grpc.StatusCode.NOT_FOUND, "has no version '2'", "sentiment", "2", [("tokens", "INT32", [1, ids.shape[1]], ids)]),
        "wrong datatype": (grpc.StatusCode.INVALID_ARGUMENT, "datatype INT32", "sentiment", "", [("tokens", "INT64", [1, ids.shape[1]], ids.astype(np.int64))]),
        "count mismatch": (grpc.StatusCode.INVALID_ARGUMENT, "needs", "sentiment", "", [("tokens", "INT32", [2, ids.shape[1]], ids)]),
        "unknown input": (grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'x'", "pair", "", [("x", "FP32", [1], np.ones(1, np.float32))]),
    }
    for what, (code, message, model, version, tensors) in cases.items():
        request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
        for name, datatype, shape, value in tensors:
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            request.raw_input_contents.append(value.tobytes())
        got, details = _code(lambda: stub.ModelInfer(request))
        assert got == code and message in details and "\n" not in details, (what, got, details)
    big = np.zeros((400, 64), np.int32)  # 100 KiB, over the 64 KiB limit
    with pytest.raises(InferenceServerException) as caught:
        client.infer("sentiment", [_tensor("tokens", big, "INT32")])
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value
    assert client.infer("sentiment", [_texts(["still here"])]).as_numpy("label")[0] in (b"positive", b"negative")


def test_concurrent_grpc_requests_share_calls_and_equal_lone_calls(servers, http, refs):
    def count():
        for line in http.get("/metrics").text.splitlines():
            if line.startswith('keras_attn_batch_rows_count{model="pair"}'):
                return float(line.split()[-1])
        return 0.0

    requests = [pair_feeds(1 + i % 3, seed=50 + i) for i in range(32)]

    def ask(feeds):
        with grpcclient.InferenceServerClient(servers[1]) as client:
            return client.infer("pair", [_tensor(n, v, "FP32") for n, v in feeds.items()])

    before = count()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, requests))
    for feeds, result in zip(requests, results):
        for name, value in refs["pair"].run(feeds).items():
            close(result.as_numpy(name), value)
    assert count() - before < len(requests), "no gRPC request shared a call"


def test_metrics_count_requests_by_protocol(client, http, refs):
    client.infer("sentiment", [_texts(["good"])])
    with pytest.raises(InferenceServerException):
        client.infer("pair", [_texts(["good"])])
    text = http.get("/metrics").text
    assert 'keras_attn_requests_total{endpoint="infer",model="sentiment",protocol="grpc",status="OK"}' in text
    assert 'keras_attn_requests_total{endpoint="infer",model="pair",protocol="grpc",status="INVALID_ARGUMENT"}' in text


def test_workers_share_the_grpc_port_and_sigterm_exits_0(pair):
    process, _ = start_server([str(pair), "--port", "0", "--workers", "2"])
    try:
        deadline = time.monotonic() + 60
        while True:  # the workers start after the start-up line
            try:
                with grpcclient.InferenceServerClient(process.grpc_address) as client:
                    if client.is_server_ready():
                        break
            except InferenceServerException:
                assert time.monotonic() < deadline, "no worker answered gRPC within 60 s"
                time.sleep(0.1)
        feeds = pair_feeds(2)
        for _ in range(20):  # a new connection each, spread over both workers by the kernel
            with grpcclient.InferenceServerClient(process.grpc_address) as client:
                result = client.infer("pair", [_tensor(n, v, "FP32") for n, v in feeds.items()])
            close(result.as_numpy("gate"), Reference(pair).run(feeds)["gate"])
    finally:
        process.terminate()
        assert process.wait(30) == 0


def test_readme_grpc_snippet_runs_against_our_server(servers):
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    marker = "<!-- not run: needs a server on localhost:8001 (tests/test_serve_grpc.py runs this block against one) -->"
    (block,) = [part.split("```python\n", 1)[1].split("```", 1)[0] for part in readme.split(marker)[1:]]
    output = subprocess.run(
        [sys.executable, "-c", block.replace("localhost:8001", servers[1])], capture_output=True, text=True, check=True
    ).stdout
    assert output.splitlines() == [line.split("# -> ", 1)[1] for line in block.splitlines() if "# -> " in line]


def test_model_config_over_grpc_equals_http_and_the_graph(client, http):
    from export.repository import config_as_json

    config = http.get("/v2/models/pair/config").json()
    assert config == config_as_json(client.get_model_config("pair").config)
    assert config["name"] == "pair" and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 64
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("a", "TYPE_FP32", [3]),
        ("b", "TYPE_FP32", [2]),
    ]
    text = http.get("/v2/models/sentiment/config").json()
    assert text["input"] == [{"name": "tokens", "data_type": "TYPE_INT32", "dims": [-1]}]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_sigterm_under_grpc_load_answers_what_it_took_and_exits_0(pair):
    """4 gRPC clients loop; after SIGTERM every answer is right and each client is then refused, and the server exits 0.

    An RPC that reaches the server as gRPC stops is refused with CANCELLED or UNAVAILABLE (grpcio's
    choice, by how far the stop has got); both count as refused here, as a connection reset does for HTTP.
    """
    import signal
    import threading

    process, _ = start_server([str(pair), "--port", "0"])
    feeds = pair_feeds(1)
    answers, refused, wrong, stop = [], [], [], threading.Event()

    def client():
        with grpcclient.InferenceServerClient(process.grpc_address) as grpc_client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(answers) < 100_000:
                try:
                    result = grpc_client.infer("pair", [_tensor(n, v, "FP32") for n, v in feeds.items()])
                except InferenceServerException as error:
                    refusal = error.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
                    (refused if refusal else wrong).append(f"{error.status()}: {error.message()}")
                    return
                answers.append(result.as_numpy("gate"))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    before = len(answers)
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    stop.set()
    assert process.wait(30) == 0
    assert before > 0 and wrong == [], wrong[:3]
    assert len(refused) == 4  # each client's next RPC, once the server is gone
    expected = Reference(pair).run(feeds)["gate"]
    assert all(np.allclose(answer, expected, rtol=1e-5, atol=1e-6) for answer in answers)

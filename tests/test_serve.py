"""export.serve against real clients: tritonclient.http (binary and JSON), plain HTTP, and a subprocess.

Every answer is checked against an independent reference: a plain
onnxruntime session on the same file, fed the request alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_models import Reference, pair, pair_feeds, running_server, sentiment, start_server  # noqa: F401 - fixtures

httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from export.serve import Settings, create_app  # noqa: E402

TEXTS = ["What a great film, I loved it", "dull and boring", "not bad at all", "", "zyxxq unknownword"]


@pytest.fixture(scope="module")
def refs(sentiment, pair):
    return {"sentiment": Reference(sentiment), "pair": Reference(pair)}


@pytest.fixture(scope="module")
def app(sentiment, pair):
    settings = Settings(models=(str(sentiment), str(pair)), max_batch=64, max_delay_ms=30, max_body=64 * 1024)
    return create_app(settings)


@pytest.fixture(scope="module")
def server(app):
    with running_server(app) as url:
        yield url


@pytest.fixture
def slow_first_call(app):
    """Hold the first model call of the pair model for 0.5 s, so that requests sent meanwhile queue up."""
    model = app.state.registry.get("pair").model
    original, held = model.run, threading.Event()

    def run(feeds, outputs=None):
        if not held.is_set():
            held.set()
            time.sleep(0.5)
        return original(feeds, outputs)

    model.run = run
    yield
    model.run = original


@pytest.fixture
def triton(server):
    client = httpclient.InferenceServerClient(server, concurrency=16)
    yield client
    client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=f"http://{server}", timeout=30) as client:
        yield client


def text_input(texts, binary=True):
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


pytestmark = pytest.mark.slow  # every test here talks to a running server


# -- health and metadata --------------------------------------------------------


def test_health_and_server_metadata(triton, http):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("sentiment") and triton.is_model_ready("pair")
    assert not triton.is_model_ready("nope")
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "keras-attn" and "binary_tensor_data" in metadata["extensions"]
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/models/pair/ready").json() == {"name": "pair", "ready": True}


def test_model_metadata_lists_the_graph(triton, sentiment, pair):
    meta = triton.get_model_metadata("pair")
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert sorted((o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]) == [
        ("gate", "FP32", [-1, 1]),
        ("score", "FP32", [-1, 2]),
    ]
    meta = triton.get_model_metadata("sentiment")
    assert meta["inputs"] == [{"name": "tokens", "datatype": "INT32", "shape": [-1, -1]}]
    assert {o["name"] for o in meta["outputs"]} == {"probability", "attention"}
    assert meta["parameters"]["labels"] == ["negative", "positive"]
    assert meta["parameters"]["text_input"] == {"name": "text", "datatype": "BYTES", "shape": [-1]}


# -- v2 inference through tritonclient ----------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_float_model_binary_and_json(triton, refs, binary):
    feeds = pair_feeds(5, seed=1)
    inputs = []
    for name, value in feeds.items():
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("score", binary_data=binary)]
    result = triton.infer("pair", inputs, outputs=outputs, request_id="req-1")
    assert result.get_response()["id"] == "req-1"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]
    close(result.as_numpy("score"), refs["pair"].run(feeds)["score"])
    # No outputs named: tritonclient asks for all of them, as binary data.
    everything = triton.infer("pair", inputs)
    for name, value in refs["pair"].run(feeds).items():
        close(everything.as_numpy(name), value)


@pytest.mark.parametrize("binary", [True, False])
def test_text_in_label_and_model_outputs_out(triton, refs, binary):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probability", "attention")]
    result = triton.infer("sentiment", [text_input(TEXTS, binary)], outputs=outputs)
    expected = refs["sentiment"].texts(TEXTS)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == list(expected["label"])
    close(result.as_numpy("probability"), expected["probability"])
    close(result.as_numpy("attention"), expected["attention"])


def test_token_ids_as_the_model_takes_them(triton, refs):
    ids = refs["sentiment"].encoder.encode(TEXTS)
    tensor = httpclient.InferInput("tokens", list(ids.shape), "INT32")
    tensor.set_data_from_numpy(ids)
    result = triton.infer("sentiment", [tensor])
    expected = refs["sentiment"].texts(TEXTS)
    close(result.as_numpy("probability"), expected["probability"])
    assert [x.decode() for x in result.as_numpy("label")] == list(expected["label"])


def test_concurrent_requests_are_batched_and_equal_lone_calls(triton, http, refs, slow_first_call):
    before = _batch_count(http, "pair")
    requests = [pair_feeds(1 + i % 4, seed=100 + i) for i in range(24)]
    pending = []
    for feeds in requests:
        inputs = []
        for name, value in feeds.items():
            tensor = httpclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        pending.append(triton.async_infer("pair", inputs))
    for feeds, request in zip(requests, pending):
        result = request.get_result()
        for name, value in refs["pair"].run(feeds).items():
            close(result.as_numpy(name), value)
    calls = _batch_count(http, "pair") - before
    assert 2 <= calls < len(requests) / 2, calls  # those sent during the first call shared calls


def test_concurrent_text_requests_equal_lone_calls(http, refs):
    texts = [[f"{word} film number {i}" for word in ("great", "awful", "fine")[: 1 + i % 3]] for i in range(16)]

    def ask(batch):
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(batch)], "data": batch}]}
        return http.post("/v2/models/sentiment/infer", json=body).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, texts))
    for batch, answer in zip(texts, answers):
        outputs = {o["name"]: o for o in answer["outputs"]}
        expected = refs["sentiment"].texts(batch)
        assert outputs["label"]["data"] == list(expected["label"])
        close(np.array(outputs["probability"]["data"]).reshape(outputs["probability"]["shape"]), expected["probability"])


def _batch_count(http, model: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'keras_attn_batch_rows_count{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


# -- plain HTTP: JSON, nested data, v1 ---------------------------------------------------


def test_plain_json_nested_data_and_id_echo(http, refs):
    feeds = pair_feeds(2, seed=3)
    body = {
        "id": "abc",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": feeds["a"].tolist()},
            {"name": "b", "datatype": "FP32", "shape": [2, 2], "data": feeds["b"].ravel().tolist()},
        ],
        "outputs": [{"name": "gate"}],
    }
    response = http.post("/v2/models/pair/infer", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["id"] == "abc" and data["model_name"] == "pair"
    (gate,) = data["outputs"]
    assert gate["name"] == "gate" and gate["datatype"] == "FP32" and gate["shape"] == [2, 1]
    close(np.array(gate["data"]).reshape(2, 1), refs["pair"].run(feeds)["gate"])


def test_versioned_route(http):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    assert http.post("/v2/models/sentiment/versions/1/infer", json=body).status_code == 200
    assert http.post("/v2/models/sentiment/versions/2/infer", json=body).status_code == 404


def test_v1_texts_give_predictions(http, refs):
    response = http.post("/v1/models/sentiment:predict", json={"instances": TEXTS[:3]})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = refs["sentiment"].texts(TEXTS[:3])
    for prediction, p, label in zip(predictions, expected["probability"][:, 0], expected["label"]):
        assert prediction["label"] == label
        close(prediction["scores"]["positive"], p)
        close(prediction["scores"]["negative"], 1 - p)
        assert prediction["probability"] == prediction["scores"][label]
        assert [w for w, _ in prediction["attention"]] == refs["sentiment"].encoder.tokens(prediction["text"])


def test_v1_token_rows_and_float_rows(http, refs):
    ids = refs["sentiment"].encoder.encode(TEXTS[:2])
    predictions = http.post("/v1/models/sentiment:predict", json={"instances": ids.tolist()}).json()["predictions"]
    expected = refs["sentiment"].texts(TEXTS[:2])
    assert [p["label"] for p in predictions] == list(expected["label"])
    close([p["scores"]["positive"] for p in predictions], expected["probability"][:, 0])

    feeds = pair_feeds(3, seed=4)
    instances = [{"a": feeds["a"][i].tolist(), "b": feeds["b"][i].tolist()} for i in range(3)]
    predictions = http.post("/v1/models/pair:predict", json={"instances": instances}).json()["predictions"]
    reference = refs["pair"].run(feeds)
    close([p["score"] for p in predictions], reference["score"])
    close([p["gate"] for p in predictions], reference["gate"])


def test_v1_metadata(http):
    data = http.get("/v1/models/sentiment").json()
    assert data["name"] == "sentiment" and data["ready"] is True
    assert http.get("/v1/models/nope").status_code == 404


# -- bad requests: 4xx with one line, and the server goes on ---------------------------------


def _text(data, **fields):
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(data)], "data": data}
    tensor.update(fields)
    return {"inputs": [tensor]}


BAD = [
    ("sentiment", b"{oops", 400, "not valid JSON"),
    ("sentiment", _text(["x"], datatype="FP32"), 400, "needs numbers"),
    ("sentiment", {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]}, 400, "datatype INT32"),
    ("sentiment", _text(["a", "b"], shape=[3]), 400, "needs 3 elements, got 2"),
    ("sentiment", _text(["a", "b"], shape=[1, 2]), 400, "shape [n]"),
    ("sentiment", {"inputs": [{"name": "words", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400, "unknown input 'words'"),
    ("sentiment", {**_text(["a"]), "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
    ("sentiment", {"inputs": [{"name": "tokens", "datatype": "INT32", "shape": [1, 3], "data": [5, 10**6, 0]}]}, 400, "outside the vocabulary"),
    ("sentiment", {"inputs": [{"name": "tokens", "datatype": "INT32", "shape": [1, 2], "data": [-1, 0]}]}, 400, "outside the vocabulary"),
    ("pair", {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}, 400, "missing input 'b'"),
    ("pair", {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                         {"name": "b", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, 400, "'a'"),
    ("nope", _text(["a"]), 404, "unknown model 'nope'"),
]


@pytest.mark.parametrize("model, body, status, message", BAD)
def test_bad_requests_get_a_4xx_line_and_the_server_goes_on(http, refs, model, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(f"/v2/models/{model}/infer", content=content)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    good = http.post("/v2/models/sentiment/infer", json=_text(["great film"])).json()
    assert {o["name"]: o for o in good["outputs"]}["label"]["data"] == list(refs["sentiment"].texts(["great film"])["label"])


def test_tritonclient_sees_the_error_line(triton):
    tensor = httpclient.InferInput("tokens", [1, 2], "INT32")
    tensor.set_data_from_numpy(np.array([[1, 10**6]], np.int32))
    with pytest.raises(InferenceServerException, match="outside the vocabulary"):
        triton.infer("sentiment", [tensor])


def test_body_over_the_limit_is_refused_before_it_is_read(server):
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        reply = conn.recv(4096).decode()  # answered while 1 GB is still "coming"
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"error"' in reply


def test_chunked_body_over_the_limit(http):
    def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = http.post("/v2/models/pair/infer", content=chunks())
    assert response.status_code == 413


def test_metrics_count_requests_by_model_and_status(http):
    http.post("/v2/models/pair/infer", content=b"{")
    text = http.get("/metrics").text
    assert 'keras_attn_requests_total{endpoint="infer",model="pair",protocol="http",status="400"}' in text
    assert 'keras_attn_request_duration_seconds_bucket{endpoint="infer"' in text
    assert 'keras_attn_batch_rows_bucket{le="1.0",model="sentiment"}' in text
    assert 'keras_attn_queue_rows{model="pair"} 0.0' in text


# -- the process: start and stop lines, SIGTERM, option errors ------------------------------------


def test_sigterm_finishes_in_flight_requests_and_exits_0(pair):
    process, address = start_server([str(pair), "--port", "0", "--max-delay-ms", "1500"])
    try:
        feeds = pair_feeds(1)
        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
        answer = {}

        def ask():
            answer["response"] = httpx.post(f"http://{address}/v2/models/pair/infer", json=body, timeout=30)

        thread = threading.Thread(target=ask)
        thread.start()
        time.sleep(0.5)  # the request now waits 1.5 s in the batcher
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert answer["response"].status_code == 200
        assert process.wait(30) == 0
        err = process.stderr.read()
        assert err.startswith("stopped serving pair"), err
        assert err.count("\n") == 1  # one line per start and stop, no access log
        assert process.stdout.read() == ""
    finally:
        process.kill()
        process.wait()


def _connect(address):
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _http_answers(connection) -> list[tuple[bytes, dict, bytes]]:
    """Every response read from ``connection`` until the server closes it: (status line, headers, body)."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    answers = []
    while data:
        head, data = data.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        length = int(headers[b"content-length"])
        answers.append((status, headers, data[:length]))
        data = data[length:]
    return answers


def _post(path: str, body: bytes, *, chunked: bool = False, headers: str = "") -> bytes:
    """A whole HTTP/1.1 POST: with Content-Length (export.serve's direct path) or chunked (through ASGI)."""
    if chunked:
        return (f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n{headers}\r\n".encode()
                + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    return f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{headers}\r\n".encode() + body


def _pair_body(rows: int, seed: int = 0, **extra) -> bytes:
    feeds = pair_feeds(rows, seed)
    return json.dumps({"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
                                  for n, v in feeds.items()], **extra}).encode()


def test_infer_answers_are_the_same_without_asgi_and_through_it(server, refs):
    # A request with a Content-Length is answered at the HTTP protocol; a chunked one goes through Starlette.
    import tritonclient.http as client_module

    tensor = client_module.InferInput("a", [2, 3], "FP32")
    tensor.set_data_from_numpy(pair_feeds(2)["a"], binary_data=True)
    other = client_module.InferInput("b", [2, 2], "FP32")
    other.set_data_from_numpy(pair_feeds(2)["b"], binary_data=True)
    binary, json_length = client_module.InferenceServerClient.generate_request_body([tensor, other])
    cases = [
        ("/v2/models/pair/infer", _pair_body(2, id="r-1"), ""),
        ("/v2/models/pair/versions/1/infer", _pair_body(1, outputs=[{"name": "gate"}]), ""),
        ("/v2/models/pair/infer", binary, f"inference-header-content-length: {json_length}\r\n"),
        ("/v2/models/pair/infer", b"{not json", ""),
        ("/v2/models/pair/infer", _pair_body(1, outputs=[{"name": "nope"}]), ""),
        ("/v2/models/missing/infer", _pair_body(1), ""),
        ("/v2/models/pair/versions/7/infer", _pair_body(1), ""),
        ("/v2/models/pair/infer", binary, "inference-header-content-length: x\r\n"),
    ]
    answers = {}
    for chunked in (False, True):
        with _connect(server) as connection:
            connection.sendall(b"".join(_post(path, body, chunked=chunked, headers=extra) for path, body, extra in cases)
                               + _post("/v2/models/pair/infer", _pair_body(1), headers="connection: close\r\n"))
            answers[chunked] = _http_answers(connection)
    for direct, through_asgi in zip(answers[False], answers[True], strict=True):
        assert direct[0] == through_asgi[0] and direct[2] == through_asgi[2]
        for name in (b"content-type", b"inference-header-content-length"):
            assert direct[1].get(name) == through_asgi[1].get(name)
    statuses = [status.split()[1] for status, _, _ in answers[False]]
    assert statuses == [b"200", b"200", b"200", b"400", b"400", b"404", b"404", b"400", b"200"]
    first = json.loads(answers[False][0][2])
    assert first["id"] == "r-1" and first["model_name"] == "pair"
    expected = refs["pair"].run(pair_feeds(2))
    for output in first["outputs"]:
        np.testing.assert_allclose(np.array(output["data"]).reshape(output["shape"]), expected[output["name"]], rtol=1e-6)
    assert answers[False][-1][1][b"connection"] == b"close"


def test_pipelined_requests_are_answered_in_order_whichever_path_they_take(server, refs):
    requests = [
        _post("/v2/models/pair/infer", _pair_body(1, seed=1)),
        b"GET /v2/models/pair HTTP/1.1\r\nhost: x\r\n\r\n",
        _post("/v2/models/pair/infer", _pair_body(3, seed=2), chunked=True),
        _post("/v2/models/pair/infer", _pair_body(2, seed=3), headers="connection: close\r\n"),
    ]
    with _connect(server) as connection:
        connection.sendall(b"".join(requests))
        answers = _http_answers(connection)
    assert [status.split()[1] for status, _, _ in answers] == [b"200"] * 4
    assert json.loads(answers[1][2])["name"] == "pair"
    for (_, _, body), (rows, seed) in zip([answers[0], answers[2], answers[3]], [(1, 1), (3, 2), (2, 3)]):
        expected = refs["pair"].run(pair_feeds(rows, seed))
        for output in json.loads(body)["outputs"]:
            np.testing.assert_allclose(np.array(output["data"]).reshape(output["shape"]), expected[output["name"]], rtol=1e-6)


def test_requests_cut_before_their_body_leave_no_one_waiting(pair):
    # A request counts as arriving from its headers on, and the batcher holds a request back while others
    # arrive: one whose connection goes mid-body must stop counting, or every later request would wait.
    process, address = start_server([str(pair), "--port", "0", "--max-delay-ms", "3000", "--no-grpc"])
    try:
        body = _pair_body(1)
        for pipelined in (b"", _post("/v2/models/pair/infer", body)):
            for _ in range(3):
                with _connect(address) as connection:
                    connection.sendall(pipelined + _post("/v2/models/pair/infer", body)[:-5])
                    if pipelined:
                        assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.2)
        with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
            for _ in range(3):
                started = time.perf_counter()
                assert client.post("/v2/models/pair/infer", content=body).status_code == 200
                assert time.perf_counter() - started < 1.0  # not the 3 s a lone request would wait for a ghost
        with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
            assert client.post("/v2/models/pair/infer", content=b"x" * 100, headers={"content-length": "100"}).status_code == 400
    finally:
        process.kill()
        process.wait()


def test_a_trickling_client_is_cut_and_stalls_no_one(pair):
    # uvicorn alone has no read timeout: a client sending a byte a second held its connection forever.
    process, address = start_server([str(pair), "--port", "0", "--timeout-read", "2", "--timeout-keep-alive", "1"])
    try:
        feeds = pair_feeds(1)
        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
        request = json.dumps(body).encode()
        head = f"POST /v2/models/pair/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(request)}\r\n\r\n"
        slow_headers, slow_body, idle = _connect(address), _connect(address), _connect(address)
        started = time.monotonic()
        slow_body.sendall(head.encode() + request[:5])
        latencies = []
        with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
            sent = 0
            while time.monotonic() - started < 4 and sent < len(head):  # bounded: 4 s, one byte a tick
                with contextlib.suppress(OSError):
                    slow_headers.send(head[sent].encode())
                sent += 1
                t = time.perf_counter()
                assert client.post("/v2/models/pair/infer", json=body).status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.05)
        # Each slow connection got a 408 line (or was closed) and is gone; the idle one is closed too.
        for connection in (slow_headers, slow_body):
            answer = connection.recv(4096)
            if answer:
                assert answer.startswith(b"HTTP/1.1 408 ") and b"request not received within 2 s" in answer
                assert connection.recv(4096) == b""
        assert idle.recv(4096) == b""
        assert time.monotonic() - started < 10
        # The other client's requests were served meanwhile, never held behind the trickle.
        assert len(latencies) > 20 and sorted(latencies)[int(0.99 * len(latencies))] < 0.5
        for connection in (slow_headers, slow_body, idle):
            connection.close()
    finally:
        process.kill()
        process.wait()


def test_access_log_on_request(pair):
    process, address = start_server([str(pair), "--port", "0", "--access-log"])
    try:
        assert httpx.get(f"http://{address}/v2/health/live", timeout=30).status_code == 200
        # An infer request is logged too: with the access log on, it goes through ASGI like any other.
        assert httpx.post(f"http://{address}/v2/models/pair/infer", content=_pair_body(1), timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        err = process.stderr.read()
        assert '"GET /v2/health/live HTTP/1.1" 200' in err and err.rstrip().endswith(" s"), err
        assert '"POST /v2/models/pair/infer HTTP/1.1" 200' in err, err
        assert err.count("\n") == 3  # the two access lines and the stop line
    finally:
        process.kill()
        process.wait()


def _workers(pid: int) -> set[int]:
    """The server's worker processes (multiprocessing children, not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = set()
    for child in map(int, children):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"multiprocessing" in command and b"resource_tracker" not in command:
                found.add(child)
    return found


def _wait_ready(address, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if httpx.get(f"http://{address}/v2/models/pair/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)


def _sockets(pid: int) -> int:
    """How many sockets the process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_a_thousand_idle_connections_slow_no_one_and_are_closed_when_idle(pair):
    process, address = start_server([str(pair), "--port", "0", "--timeout-keep-alive", "5"])
    idle = []
    try:
        feeds = pair_feeds(1)
        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
        for _ in range(1000):  # connections opened and left idle
            connection = _connect(address)
            idle.append(connection)
        opened = time.monotonic()
        # The kernel completes a handshake before the server accepts it: wait until the server
        # holds all 1,000, or the clients' first requests queue behind the accepts still to come.
        while _sockets(process.pid) < 1000:
            assert time.monotonic() - opened < 2, f"the server accepted {_sockets(process.pid)} of 1000"
            time.sleep(0.01)
        latencies = []

        def client():
            with httpx.Client(base_url=f"http://{address}", timeout=30) as http:
                # Untimed: the client's connection set-up, and the model's first runs.
                assert http.post("/v2/models/pair/infer", json=body).status_code == 200
                for _ in range(40):
                    t = time.perf_counter()
                    assert http.post("/v2/models/pair/infer", json=body).status_code == 200
                    latencies.append(time.perf_counter() - t)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client(), range(8)))
        assert time.monotonic() - opened < 5  # all served while the 1,000 were open
        p99 = sorted(latencies)[int(0.99 * len(latencies))]
        assert len(latencies) == 320 and p99 < 0.05, f"p99 {p99 * 1000:.1f} ms"
        # Idle past --timeout-keep-alive: the server closes every one of them.
        deadline = time.monotonic() + 30
        for connection in idle:
            connection.settimeout(max(deadline - time.monotonic(), 0.1))
            assert connection.recv(1) == b""
        assert time.monotonic() - opened >= 4.5
    finally:
        for connection in idle:
            connection.close()
        process.kill()
        process.wait()


def test_two_workers_serve_and_stop(pair):
    process, address = start_server([str(pair), "--port", "0", "--workers", "2"])
    try:
        _wait_ready(address)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert process.stderr.read().startswith("stopped serving pair")  # nothing from the workers
    finally:
        process.kill()
        process.wait()


def test_a_killed_worker_is_replaced_and_costs_only_its_requests_in_flight(pair):
    process, address = start_server([str(pair), "--port", "0", "--workers", "2"])
    try:
        _wait_ready(address)
        deadline = time.monotonic() + 30
        while len(_workers(process.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        before = _workers(process.pid)
        feeds = pair_feeds(1)
        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
        results = {"ok": 0, "failed": 0}
        stop = threading.Event()

        def client():
            # A new connection each time: a keep-alive one would stay on the killed worker.
            while not stop.is_set() and results["ok"] + results["failed"] < 20_000:
                try:
                    ok = httpx.post(f"http://{address}/v2/models/pair/infer", json=body, timeout=10).status_code == 200
                except httpx.TransportError:
                    ok = False
                results["ok" if ok else "failed"] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed_at, done_before = time.monotonic(), results["ok"]
        while True:  # replaced: two workers again, the victim not among them
            now = _workers(process.pid)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() - killed_at < 30, f"not replaced: {now}"
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert results["ok"] > done_before + 20  # it kept answering
        assert results["failed"] <= 4  # at most one request in flight per client on the killed worker
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_unexpected_errors_are_500_one_line_logged_with_traceback(pair, caplog):
    app = create_app(Settings(models=(str(pair),), max_delay_ms=0))
    model = app.state.registry.get("pair")

    def broken(feeds, outputs=None):
        raise RuntimeError("disk on fire\nsecond line")

    with running_server(app) as url, httpx.Client(base_url=f"http://{url}") as client:
        feeds = pair_feeds(1)
        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
        original, model.model.run = model.model.run, broken
        with caplog.at_level("ERROR", logger="export.serve"):
            response = client.post("/v2/models/pair/infer", json=body)
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: disk on fire second line"}
        assert "Traceback" in caplog.text and "disk on fire" in caplog.text
        model.model.run = original
        assert client.post("/v2/models/pair/infer", json=body).status_code == 200


def test_readme_client_snippets_run_against_our_server(server, sentiment):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    marker = "<!-- not run: needs a server on localhost:8000 (tests/test_serve.py runs this block against one) -->"
    blocks = [part.split("```python\n", 1)[1].split("```", 1)[0] for part in readme.split(marker)[1:]]
    assert len(blocks) == 2  # token ids, and text
    for block in blocks:
        assert 'InferenceServerClient("localhost:8000")' in block
        code = block.replace("localhost:8000", server).replace('"sentiment.onnx"', repr(str(sentiment)))
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent.parent).stdout
        expected = [line.split("# -> ", 1)[1] for line in block.splitlines() if "# -> " in line]
        assert output.splitlines() == expected


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_200k_mixed_requests_fail_no_valid_one_and_keep_memory_flat(sentiment):
    """Valid and invalid bodies mixed: every valid one 200, every invalid one a 4xx of one line, RSS flat."""
    import asyncio

    process, address = start_server([str(sentiment), "--port", "0"])
    host, port = address.rsplit(":", 1)

    def request(path: str, body: bytes) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    infer = "/v2/models/sentiment/infer"
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["what a great film"]}
    cases = [  # (request, expected status)
        (request(infer, json.dumps({"inputs": [text]}).encode()), 200),
        (request(infer, b'{"inputs": [ '), 400),  # malformed JSON
        (request(infer, json.dumps({"inputs": [{**text, "datatype": "FP32", "data": [1.0]}]}).encode()), 400),
        (request(infer, json.dumps({"inputs": [{**text, "shape": [2]}]}).encode()), 400),  # count mismatch
        (request(infer, json.dumps({"inputs": [{**text, "name": "words"}]}).encode()), 400),
        (request("/v2/models/nope/infer", json.dumps({"inputs": [text]}).encode()), 404),
        (request(infer, json.dumps({"inputs": [text], "outputs": [{"name": "nope"}]}).encode()), 400),
    ]
    order = [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6]  # half valid
    total, clients = 200_000, 16
    counts = {"sent": 0, "valid_failed": 0, "invalid_wrong": 0}
    rss = {}

    async def client(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        k = offset
        try:
            while counts["sent"] < total:
                counts["sent"] += 1
                if counts["sent"] == 10_000:
                    rss["at_10k"] = _rss_mib(process.pid)
                data, expected = cases[order[k % len(order)]]
                k += 1
                writer.write(data)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
                body = await reader.readexactly(length)
                status = int(head.split(b" ", 2)[1])
                if expected == 200:
                    counts["valid_failed"] += status != 200
                else:
                    message = json.loads(body).get("error", "")
                    counts["invalid_wrong"] += status != expected or not message or "\n" in message
        finally:
            writer.close()

    async def load() -> None:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), timeout=600)

    try:
        asyncio.run(load())
        rss["end"] = _rss_mib(process.pid)
        assert counts["sent"] >= total and counts["valid_failed"] == 0 and counts["invalid_wrong"] == 0, counts
        assert rss["end"] - rss["at_10k"] < 20, rss
        assert process.poll() is None  # still serving
    finally:
        process.kill()
        process.wait()


def test_sigterm_under_load_answers_what_is_in_flight_and_refuses_new_connections(pair):
    process, address = start_server([str(pair), "--port", "0"])
    try:
        feeds = pair_feeds(1)
        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
        results = {"ok": 0, "refused_before": 0, "refused_after": 0, "dropped": 0, "other": 0}
        signalled = []

        def client():
            # A new connection a request, until they are refused (at most 60 s or 20,000 requests).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(results.values()) < 20_000:
                try:
                    status = httpx.post(f"http://{address}/v2/models/pair/infer", json=body, timeout=30).status_code
                    results["ok" if status == 200 else "other"] += 1
                except httpx.ConnectError:
                    results["refused_after" if signalled else "refused_before"] += 1
                    return
                except httpx.TransportError:
                    if not signalled:  # accepted, then cut: a request lost
                        results["dropped"] += 1
                        continue
                    # A connection the kernel had completed but the server had not read when it
                    # closed its socket is reset: refused too, as the client sees it.
                    results["refused_after"] += 1
                    return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        answered = results["ok"]
        signalled.append(time.monotonic())
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        # Every client then finds it closed; each request answered was answered 200 (the test
        # above holds a request in the batcher across SIGTERM and sees it answered).
        assert answered > 0 and results["refused_after"] == 4, results
        assert results["dropped"] == results["other"] == results["refused_before"] == 0, results
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()

"""export.serve on a Triton model repository: versions, the configs' batching, and the three control modes.

Clients are real (tritonclient.http and tritonclient.grpc); every answer is
checked against a plain onnxruntime session on the version's own file
(`serve_models.Reference`).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_models import Reference, pair_feeds, pair_onnx, running_server, sentiment  # noqa: F401 - fixtures

httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from export.serve import Settings, create_app, reserve_port  # noqa: E402

pytestmark = pytest.mark.slow  # every test here talks to a running server

PAIR_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n{policy}\n{batching}\n'


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Three different pair models (seeds 0, 1, 2): versions 1, 2 and 3 below."""
    return [pair_onnx(tmp_path_factory, seed) for seed in (0, 1, 2)]


def _model(repo, name, files: dict, config: str | None = None):
    folder = repo / name
    for version, path in files.items():
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / str(version) / "model.onnx")
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder


def _infer(http, model, feeds, version=None):
    route = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}
    response = http.post(route, json=body)
    return response


def _outputs(response):
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def _same(outputs, expected):
    return all(np.allclose(outputs[name], value, rtol=1e-5, atol=1e-6) for name, value in expected.items())


class Served:
    """A repository served in this process (HTTP and gRPC), with clients."""

    def __init__(self, **settings):
        self._reservation = reserve_port("127.0.0.1", 0)
        self.grpc_address = f"127.0.0.1:{self._reservation.getsockname()[1]}"
        self.app = create_app(Settings(grpc_port=self._reservation.getsockname()[1], **settings))
        self._running = running_server(self.app)

    def __enter__(self):
        self.address = self._running.__enter__()
        self.http = httpx.Client(base_url=f"http://{self.address}", timeout=30)
        self.triton = httpclient.InferenceServerClient(self.address)
        self.grpc = grpcclient.InferenceServerClient(self.grpc_address)
        return self

    def __exit__(self, *exc):
        self.http.close()
        self.triton.close()
        self.grpc.close()
        self._running.__exit__(*exc)
        self._reservation.close()

    def versions(self, name):
        return self.http.get(f"/v2/models/{name}").json().get("versions")


def test_what_to_triton_writes_is_served_and_the_rest_reported(sentiment, tmp_path):
    from export.to_triton import write_repository, write_text_ensemble

    repo = tmp_path / "repo"
    write_repository(sentiment, repo)
    write_text_ensemble(sentiment, repo, name="reviews")
    with Served(repository=str(repo)) as served:
        texts = ["a wonderful film", "the battery died, terrible"]
        tensor = httpclient.InferInput("text", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        result = served.triton.infer("sentiment", [tensor])
        expected = Reference(sentiment).texts(texts)
        assert [x.decode() for x in result.as_numpy("label")] == list(expected["label"])
        index = {entry["name"]: entry for entry in served.triton.get_model_repository_index()}
        assert index["sentiment"]["state"] == index["reviews_ids"]["state"] == "READY"
        for name in ("reviews", "reviews_encode", "reviews_decode"):
            assert index[name]["state"] == "UNAVAILABLE" and "Triton runs it" in index[name]["reason"], index[name]
        grpc_index = {m.name: m.state for m in served.grpc.get_model_repository_index().models}
        assert grpc_index == {name: entry["state"] for name, entry in index.items()}
        ready = served.http.post("/v2/repository/index", json={"ready": True}).json()
        assert sorted(entry["name"] for entry in ready) == ["reviews_ids", "sentiment"]


@pytest.mark.parametrize(
    "policy, served_versions",
    [
        ("", ["3"]),
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { all: {} }", ["1", "2", "3"]),
        ("version_policy: { specific: { versions: [1, 3] } }", ["1", "3"]),
    ],
)
def test_version_policy_and_versioned_routes(pairs, tmp_path, policy, served_versions):
    _model(tmp_path, "pair", dict(zip((1, 2, 3), pairs)), PAIR_CONFIG.format(policy=policy, batching=""))
    feeds = pair_feeds(3, seed=9)
    expected = {str(v): Reference(path).run(feeds) for v, path in zip((1, 2, 3), pairs)}
    with Served(repository=str(tmp_path)) as served:
        assert served.versions("pair") == served_versions
        for version in ("1", "2", "3"):
            response = _infer(served.http, "pair", feeds, version)
            if version in served_versions:
                assert response.json()["model_version"] == version
                assert _same(_outputs(response), expected[version])
                assert served.grpc.is_model_ready("pair", version)
            else:
                assert response.status_code == 404 and f"no version '{version}'" in response.json()["error"]
                assert not served.grpc.is_model_ready("pair", version)
        newest = _infer(served.http, "pair", feeds)
        assert newest.json()["model_version"] == served_versions[-1]
        config = served.http.get("/v2/models/pair/config").json()
        message = served.grpc.get_model_config("pair").config  # the config.pbtxt as Triton reads it
        assert config["name"] == message.name == "pair" and config["max_batch_size"] == message.max_batch_size == 8
        assert message.HasField("version_policy") == bool(policy) == ("version_policy" in config)
        if "specific" in policy:
            assert config["version_policy"]["specific"]["versions"] == list(message.version_policy.specific.versions) == [1, 3]


def _calls(http, model):
    """keras_attn_batch_rows' series of ``model``: "count", and "le=N" per bucket."""
    values = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("keras_attn_batch_rows_") and f'model="{model}"' in line:
            bucket = line.split('le="')[1].split('"')[0] if 'le="' in line else None
            values[f"le={bucket}" if bucket else line.split("{")[0].rsplit("_", 1)[1]] = float(line.split()[-1])
    return values


@pytest.mark.parametrize("batching", [True, False])
def test_the_configs_max_batch_size_and_dynamic_batching_drive_the_batcher(pairs, tmp_path, batching):
    dynamic = "dynamic_batching { max_queue_delay_microseconds: 200000 }" if batching else ""
    _model(tmp_path, "pair", {1: pairs[0]}, PAIR_CONFIG.format(policy="", batching=dynamic))
    with Served(repository=str(tmp_path)) as served:
        model = served.app.state.registry.get("pair").model
        original = model.run

        def slow(feeds, outputs=None):  # each call takes 50 ms, so requests queue behind it
            time.sleep(0.05)
            return original(feeds, outputs)

        model.run = slow
        requests = [pair_feeds(1, seed=i) for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda feeds: _infer(served.http, "pair", feeds), requests))
        reference = Reference(pairs[0])
        assert all(_same(_outputs(a), reference.run(f)) for a, f in zip(answers, requests))
        calls = _calls(served.http, "pair")
        count = calls["count"]
        if batching:  # gathered, never over max_batch_size 8
            assert count < len(requests) and calls["le=8.0"] == count, calls
        else:  # Triton without dynamic_batching: each request alone
            assert count == len(requests) and calls["le=1.0"] == count, calls


def test_explicit_mode_loads_and_unloads_over_http_and_grpc(pairs, tmp_path):
    _model(tmp_path, "a", {1: pairs[0]})
    _model(tmp_path, "b", {1: pairs[1]})
    feeds = pair_feeds(2, seed=4)
    with Served(repository=str(tmp_path), control_mode="explicit", load_models=("a",)) as served:
        index = {entry["name"]: entry for entry in served.triton.get_model_repository_index()}
        assert index["a"]["state"] == "READY" and index["b"] == {"name": "b", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
        missing = _infer(served.http, "b", feeds)
        assert missing.status_code == 404 and missing.json()["error"] == "model 'b' is not loaded: unloaded"

        served.triton.load_model("b")
        assert served.triton.is_model_ready("b")
        assert _same(_outputs(_infer(served.http, "b", feeds)), Reference(pairs[1]).run(feeds))

        served.grpc.unload_model("a")
        assert not served.grpc.is_model_ready("a")
        assert _infer(served.http, "a", feeds).status_code == 404

        (tmp_path / "b" / "2").mkdir()
        (tmp_path / "b" / "2" / "model.onnx").write_bytes(b"not an onnx file")
        with pytest.raises(InferenceServerException) as caught:
            served.grpc.load_model("b")
        message = caught.value.message()
        assert "cannot load model 'b'" in message and "still serving version 1" in message and "\n" not in message
        assert _same(_outputs(_infer(served.http, "b", feeds)), Reference(pairs[1]).run(feeds))

        unknown = served.http.post("/v2/repository/models/zzz/load")
        assert unknown.status_code == 400 and "no model 'zzz'" in unknown.json()["error"]


def test_load_and_unload_are_refused_in_none_mode(pairs, tmp_path):
    _model(tmp_path, "a", {1: pairs[0]})
    with Served(repository=str(tmp_path)) as served:
        response = served.http.post("/v2/repository/models/a/unload")
        assert response.status_code == 409 and "--model-control-mode explicit" in response.json()["error"]
        with pytest.raises(InferenceServerException) as caught:
            served.grpc.load_model("a")
        assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert served.triton.is_model_ready("a")


def test_a_request_in_flight_finishes_on_the_version_it_started_on(pairs, tmp_path):
    _model(tmp_path, "a", {1: pairs[0]})
    feeds = pair_feeds(2, seed=5)
    body = (
        '{"inputs": ['
        + ", ".join(
            f'{{"name": "{n}", "datatype": "FP32", "shape": {list(v.shape)}, "data": {v.ravel().tolist()}}}' for n, v in feeds.items()
        )
        + "]}"
    ).encode()
    with Served(repository=str(tmp_path), control_mode="explicit", load_models=("*",)) as served:
        host, port = served.address.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST /v2/models/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.3)  # the server has taken version 1 for it and waits for the body
            _model(tmp_path, "a", {2: pairs[1]})
            served.triton.load_model("a")  # returns with version 2 in, version 1 still answering
            assert served.versions("a") == ["2"]
            sock.sendall(body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, content = answer.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(content) < length:
                content += sock.recv(65536)
        old = json.loads(content)
        assert head.startswith(b"HTTP/1.1 200") and old["model_version"] == "1"
        assert _same({o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in old["outputs"]}, Reference(pairs[0]).run(feeds))
        new = _infer(served.http, "a", feeds)
        assert new.json()["model_version"] == "2" and _same(_outputs(new), Reference(pairs[1]).run(feeds))


def test_poll_swaps_a_new_version_in_under_load_and_refuses_a_broken_one(pairs, tmp_path, caplog):
    _model(tmp_path, "a", {1: pairs[0]})
    _model(tmp_path, "b", {1: pairs[1]})
    feeds = pair_feeds(2, seed=6)
    expected = {"1": Reference(pairs[0]).run(feeds), "2": Reference(pairs[1]).run(feeds)}
    stop, answers, failures = threading.Event(), [], []

    def client(address):
        with httpx.Client(base_url=f"http://{address}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(answers) < 100_000:
                response = _infer(http, "a", feeds)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                data = response.json()
                if not _same(_outputs(response), expected[data["model_version"]]):
                    failures.append(f"version {data['model_version']} answered with other numbers")
                answers.append(data["model_version"])

    with caplog.at_level("INFO", logger="export.serve"), Served(
        repository=str(tmp_path), control_mode="poll", poll_seconds=0.2
    ) as served:
        threads = [threading.Thread(target=client, args=(served.address,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            staging = tmp_path / ".staging"
            (staging / "2").mkdir(parents=True)
            shutil.copy(pairs[1], staging / "2" / "model.onnx")
            (staging / "2").rename(tmp_path / "a" / "2")  # a version folder dropped in whole
            deadline = time.monotonic() + 20
            while served.versions("a") != ["2"]:
                assert time.monotonic() < deadline, "version 2 was not served within 20 s"
                time.sleep(0.05)
            seen = len(answers)
            while len(answers) < seen + 50:
                time.sleep(0.01)

            (tmp_path / "a" / "3").mkdir()
            (tmp_path / "a" / "3" / "model.onnx").write_bytes(b"broken")
            time.sleep(1.0)  # five polls
            assert served.versions("a") == ["2"]
            shutil.rmtree(tmp_path / "b")
            deadline = time.monotonic() + 20
            while served.http.get("/v2/models/b").status_code != 404:
                assert time.monotonic() < deadline, "b was not unloaded within 20 s"
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert failures == [], failures[:3]
    assert answers[0] == "1" and answers[-1] == "2" and set(answers) == {"1", "2"}
    refused = [r.message for r in caplog.records if r.message.startswith("cannot load a")]
    assert len(refused) == 1 and "still serving version 2" in refused[0], refused


def test_a_model_unloading_answers_unavailable_until_its_requests_are_done(pairs, tmp_path):
    _model(tmp_path, "a", {1: pairs[0]})
    feeds = pair_feeds(1, seed=7)
    body = json.dumps({"inputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for n, v in feeds.items()]}).encode()
    with Served(repository=str(tmp_path), control_mode="explicit", load_models=("a",)) as served:
        host, port = served.address.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST /v2/models/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.3)  # in flight on version 1, waiting for its body
            unloading = threading.Thread(target=served.triton.unload_model, args=("a",))
            unloading.start()
            time.sleep(0.3)
            assert unloading.is_alive()  # waits for the request in flight
            refused = _infer(served.http, "a", feeds)
            assert refused.status_code == 503 and refused.json() == {"error": "model 'a' is unloading"}
            with pytest.raises(InferenceServerException) as caught:
                served.grpc.infer("a", [grpcclient.InferInput("a", [1, 3], "FP32").set_data_from_numpy(feeds["a"]),
                                        grpcclient.InferInput("b", [1, 2], "FP32").set_data_from_numpy(feeds["b"])])
            assert caught.value.status() == "StatusCode.UNAVAILABLE"
            sock.sendall(body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        unloading.join(30)
        assert not unloading.is_alive()
        assert _infer(served.http, "a", feeds).status_code == 404

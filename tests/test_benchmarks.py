"""The benchmark harness runs end to end in its smallest mode; no speed is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts a process

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done, json.loads(out.read_text())


def test_json_has_every_figure(smoke):
    _, results = smoke
    for key in ("machine", "model", "data", "flops", "matmul", "export", "files", "paths", "cold_start", "targets"):
        assert key in results, key
    assert {"date", "cpu", "cores", "python", "onnxruntime", "tensorflow"} <= set(results["machine"])
    expected = {"keras predict", "keras eager", "tf.function", "keras onnx (ort default)", "our file (ort default)",
                "our file (ort default, 2nd session)", "runtime fp32", "runtime int8", "runtime fp32 1 thread",
                "runtime fp32 text"}
    assert set(results["paths"]) == expected
    for by_batch in results["paths"].values():
        assert set(by_batch) == {str(b) for b in results["batches"]}
        for summary in by_batch.values():
            assert summary["sentences_per_s"] > 0
            assert {"p50_ms", "p99_ms", "speedup_vs_baseline", "roofline_share"} <= set(summary)
    compared = {"tf.function", "keras onnx (ort default)", "our file (ort default)",
                "our file (ort default, 2nd session)", "runtime fp32"}
    assert set(results["cases"]) == {"bundled model, half-length rows", "bundled model, dense full-length rows",
                                     "tutorial model (Flatten), sentences"}
    for by_path in results["cases"].values():
        assert set(by_path) == compared
        for summary in by_path["runtime fp32"].values():
            assert set(summary["speedup_vs"]) == compared - {"runtime fp32"}
        for summary in by_path["our file (ort default, 2nd session)"].values():
            assert summary["speedup_vs"]["our file (ort default)"] > 0
    assert results["runtime_batch_sweep"] and all(s["sentences_per_s"] > 0 for s in results["runtime_batch_sweep"].values())
    assert results["flops"]["total"] > 0 and not results["flops"]["ignored"]
    assert set(results["cold_start"]) == {"keras load_model + predict", "runtime SentimentPredictor"}
    for cold in results["cold_start"].values():
        assert cold["wall_s"] > 0 and cold["peak_rss_mib"] > 0
    assert all(t["status"] in ("PASS", "FAIL", "n/a") for t in results["targets"])
    # Every path agrees with tf.function on the same sentences (int8 loosely).
    assert all(diff < 0.05 for diff in results["agreement_max_abs_diff"].values())


def test_markdown_report_on_stdout(smoke):
    done, _ = smoke
    assert "| tf.function |" in done.stdout
    assert "## Targets" in done.stdout
    assert "Noise floor of the comparisons with default sessions: a second default session" in done.stdout
    assert "[1/" in done.stderr  # progress goes to stderr, not into the report
    assert "[1/" not in done.stdout


def test_no_file_is_written_without_json(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--no-cold", "--quiet", "--batches", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## Targets" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_help():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--quick" in done.stdout and "--json" in done.stdout


def test_threads_sweep_prints_the_three_tables(tmp_path):
    """`python -m benchmarks.threads` on a small fixed-length model: numpy and onnxruntime only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [100, 4], np.ones(400, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["probability"])], "lookup",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", 8])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 8, 4])], [table])
    path = tmp_path / "lookup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    done = subprocess.run([sys.executable, "-m", "benchmarks.threads", str(path), "--rounds", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    for heading in ("Small calls:", "Big calls (side by side: calls of", "1024 rows of 8 tokens in calls"):
        assert heading in done.stdout
    assert "| 1024 x 8 | " in done.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.threads", str(tmp_path / "missing.onnx")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_multi_head_smoke(tmp_path):
    """`python -m benchmarks.multi_head --smoke --contrib`: both files timed, node counts, the fused-op experiment."""
    out = tmp_path / "multi_head.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.multi_head", "--smoke", "--contrib", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for key in ("machine", "model", "data", "export", "files", "graphs", "sessions", "onnx_agreement_max_abs_diff",
                "timing", "contrib", "contrib_model", "targets"):
        assert key in results, key
    assert {"date", "cpu", "cores", "load_average_start", "load_average_end", "onnxruntime", "keras"} <= set(results["machine"])
    # The two models are one function in Keras, and the two files agree.
    assert all(diff <= 1e-5 for diff in results["model"]["keras_agreement_max_abs_diff"].values())
    assert all(diff is not None and diff <= 1e-4 for diff in results["onnx_agreement_max_abs_diff"].values())
    from benchmarks.multi_head import KERAS, OURS, OURS_TWIN

    assert set(results["timing"]) == {str(b) for b in results["settings"]["batches"]}
    for by_path in results["timing"].values():
        assert set(by_path) == {KERAS, OURS, OURS_TWIN}
        for summary in by_path.values():
            assert summary["sentences_per_s"] > 0 and summary["speedup_vs_first"] > 0
    for graph in results["graphs"].values():
        assert {"einsum", "einsum_in_file", "mask", "mask_applied", "nodes", "ops"} <= set(graph)
        assert graph["mask"].get("Equal") == 1  # tokens != 0, found
    assert results["graphs"]["ours"]["einsum"] == 0
    cores = results["contrib"]["cores"]
    assert set(cores) == {"plain subgraph (ours)", "plain, no score clip", "com.microsoft.MultiHeadAttention",
                          "Attention (opset 23)"}
    assert cores["plain subgraph (ours)"]["max_abs_diff"] < 1e-5
    assert cores["plain subgraph (ours)"]["empty_row_max_abs"] == 0
    variants = results["contrib_model"]["variants"]
    assert len(variants) == 4 and variants["our file"]["max_abs_diff"] == 0
    # Fused or not, the file computes the same outputs (an empty text included).
    assert all(v["max_abs_diff"] < 1e-4 for v in variants.values() if "error" not in v)
    for by_variant in results["contrib_model"]["timing"].values():
        assert set(by_variant) == {name for name, v in variants.items() if "error" not in v}
    assert all(t["status"] in ("PASS", "FAIL", "n/a") for t in results["targets"])
    assert any(t["name"].startswith("ours >= 1.0x keras export") for t in results["targets"])
    assert "Einsum on the hot path: ours 0, keras " in done.stdout
    assert "## Targets" in done.stdout and "[1/" in done.stderr and "[1/" not in done.stdout


def test_multi_head_help():
    done = subprocess.run([sys.executable, "-m", "benchmarks.multi_head", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--quick", "--smoke", "--json", "--contrib"):
        assert option in done.stdout


def test_ray_serve_benchmark_times_both_servers(tmp_path, tmp_path_factory):
    """`python -m benchmarks.ray_serve` in its smallest run: both servers answer every client count."""
    pytest.importorskip("ray.serve")
    import keras_attn
    from export.to_onnx import convert

    model = tmp_path / "sentiment.onnx"
    convert(keras_attn.load_pretrained(), model)
    out = tmp_path / "ray_serve.json"
    ray_tmp = tmp_path_factory.mktemp("ray")  # Ray's socket paths must stay under 108 bytes
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ray_serve", str(model), "--seconds", "0.3", "--max-requests", "100", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for server in ("export.serve --workers 2", "Ray Serve, 2 replicas"):
        assert set(results[server]) == {"1", "64"}
        assert all(0 < f["requests"] <= 100 and f["p99_ms"] >= f["p50_ms"] > 0 for f in results[server].values())
    assert "| Ray Serve, 2 replicas | 64 |" in done.stdout


def test_serve_load_beside_mlserver(tmp_path):
    """`python -m benchmarks.serve_load` in its smallest run: our server on texts and on token ids, and MLServer
    with and without its adaptive batching on the same ids when MLServer's venv is there.

    That venv (`benchmarks.mlserver_peer.DEFAULT_VENV`, ~400 MB) is made by a full run of the benchmark, never by
    this test: where it is absent, as in CI, only our server runs (``--no-mlserver``, its MLServer targets n/a)
    and the test stays fast; where it is present, the MLServer path runs too.
    """
    from benchmarks.mlserver_peer import DEFAULT_VENV, is_venv

    with_mlserver = is_venv(DEFAULT_VENV)
    out = tmp_path / "serve_load.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_load", "--seconds", "0.2", "--rounds", "1", "--max-requests", "300",
         "--json", str(out), *([] if with_mlserver else ["--no-mlserver"])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    ours = {"export.serve", "export.serve, gRPC", "floor: bare httptools + session.run", "floor: bare grpc.aio + session.run"}
    servers = ours | {"MLServer, adaptive batching", "MLServer, no batching"} if with_mlserver else ours
    assert set(results["peers"]) == servers
    for by_clients in results["peers"].values():
        assert set(by_clients) == {"1", "8", "64"}
        for figures in by_clients.values():
            assert 0 < figures["requests"] <= 300 and figures["p99_ms"] >= figures["p50_ms"] > 0
            assert figures["server_cpu_ms"] >= 0
        # /proc counts CPU in 10 ms ticks, which 300 quick requests may not fill; 900 do.
        assert sum(figures["server_cpu_ms"] for figures in by_clients.values()) > 0
    assert results["peers"]["export.serve"]["64"]["rows_per_call"] >= 1  # from our server's metrics
    assert all(r["session_run_ms"] > 0 and r["session_run_cpu_ms"] > 0 for r in results["in_process_one_row"])
    statuses = [t["status"] for t in results["targets"]]
    assert len(statuses) == 5 and statuses[-2] in ("PASS", "FAIL") and statuses[-1] in ("PASS", "FAIL")
    assert all(s in (("PASS", "FAIL") if with_mlserver else ("n/a",)) for s in statuses[:3])
    assert "| export.serve | 64 |" in done.stdout and "| export.serve, gRPC | 64 |" in done.stdout
    assert "64 clients, requests/s over gRPC (raw contents) vs HTTP/JSON" in done.stdout
    assert "server CPU per request at 1 client / in-process session.run CPU" in done.stdout
    # What bounds those two: the floors' own figures, beside the targets.
    assert "the floors, bare gRPC vs bare HTTP: " in done.stdout and "the bare HTTP floor: " in done.stdout
    cpu_target = results["targets"][-1]
    assert cpu_target["floor_cpu_ms"] >= 0 and results["targets"][-2]["floors_grpc_vs_http"] > 0
    assert ("| MLServer, adaptive batching | 1 |" in done.stdout) == with_mlserver
    assert (results["mlserver"] is not None) == with_mlserver


def test_serve_load_help(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--no-mlserver", "--mlserver-venv", "--mlserver-batch-size", "--json", "--seconds"):
        assert option in done.stdout
    # A folder that is no MLServer venv is refused in one line, and left as it was (nothing installed into it).
    (tmp_path / "keep.txt").write_text("mine")
    bad = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", "--mlserver-venv", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a virtual environment with MLServer in it" in bad.stderr
    assert "Traceback" not in bad.stderr and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_the_bare_servers_answer_what_a_session_gives(tmp_path_factory):
    """The floors of the peer comparison answer each request with the model's own probability, over HTTP and gRPC."""
    import numpy as np
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from serve_models import sentiment_onnx

    from benchmarks.serve_load import start_bare

    model = sentiment_onnx(tmp_path_factory)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    ids = np.array([[5, 17, 230, 41, 9, 12] + [0] * 34], dtype=np.int32)
    expected = session.run(["probability"], {feed: ids})[0]
    for protocol, client_module in (("http", httpclient), ("grpc", grpcclient)):
        process, port = start_bare(protocol, model)
        json_only = {"binary_data": False} if protocol == "http" else {}  # v2 JSON, what serve_load sends
        try:
            tensor = client_module.InferInput(feed, list(ids.shape), "INT32")
            tensor.set_data_from_numpy(ids, **json_only)
            with client_module.InferenceServerClient(f"127.0.0.1:{port}") as client:
                result = client.infer(model.stem, [tensor], outputs=[client_module.InferRequestedOutput("probability", **json_only)])
            np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
        finally:
            process.terminate()
            assert process.wait(30) == 0

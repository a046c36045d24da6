"""export.batch's engines on real ones: a two-node Ray cluster and Spark in local[2], against TextClassifier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from serve_models import sentiment  # noqa: F401 - fixtures
from test_batch import TEXTS, check_scored, write_csv

from export.tables import read_table
from test_export_support import ROOT as REPO

# A Ray cluster of this machine only, on loopback (read when Ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# No usage stats: nothing tries to reach the network, and Ray Data starts no metrics poller, a
# thread that outlives ray.shutdown and logs a traceback every 10 s once the cluster is gone;
# Python 3.11's traceback carets parse source with ast, and an ast.parse in another thread at
# the same moment can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905): it once did in pytest's own report of a later test.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
pytestmark = pytest.mark.slow  # clusters, sessions and processes of their own
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

WORDS = ["good", "bad", "great", "awful", "fine", "boring", "loved", "hated", "film", "phone"]


def many_texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(n)]


def batch_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "export.batch", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=300,
    )


def by_id(folder):
    table = pq.read_table(folder)
    return table.take(pa.compute.sort_indices(table, [("id", "ascending")]))


# -- Ray ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A two-node local Ray cluster of one CPU a node (with its dashboard, for the state API); the test process is its driver."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_ray_scores_every_row_once_with_actors_on_both_nodes(ray_cluster, sentiment, tmp_path):
    import ray
    from ray.util.state import list_actors

    from export.engines.ray_data import add_scores

    texts = many_texts(4000)
    source = pa.table({"id": list(range(len(texts))), "text": texts})
    # Blocks in the driver's memory: steps that need a CPU of their own would wait forever
    # behind a pool holding every CPU of the cluster.
    dataset = ray.data.from_arrow([source.slice(k * 500, 500) for k in range(8)])
    scored = add_scores(dataset, sentiment, workers=2, batch_rows=250).to_arrow_refs()
    table = pa.concat_tables(ray.get(scored))
    table = table.take(pa.compute.sort_indices(table, [("id", "ascending")]))
    assert table.column("id").to_pylist() == list(range(len(texts)))  # every row exactly once
    check_scored(table, sentiment, texts)
    scorers = [a for a in list_actors(detail=True, limit=1000) if "_Scorer" in a.class_name]
    assert len({actor.node_id for actor in scorers}) == 2, scorers


def test_ray_cli_joins_the_cluster_and_matches_the_local_engine(ray_cluster, sentiment, tmp_path):
    lines = [{"id": i, "text": t} for i, t in enumerate(TEXTS)] + [{"id": len(TEXTS)}, {"id": len(TEXTS) + 1, "text": None}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    result = batch_cli(sentiment, source, "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2",
                       env={"RAY_ADDRESS": ray_cluster.address})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"read {len(lines)} rows, scored {len(TEXTS)}, 2 without text")
    assert batch_cli(sentiment, source, "-o", tmp_path / "local").returncode == 0
    ours, local = by_id(tmp_path / "ray"), by_id(tmp_path / "local")
    assert ours.schema.equals(local.schema)
    assert ours.column("label").to_pylist() == local.column("label").to_pylist()
    for name in ("probability", "score_negative", "score_positive"):
        np.testing.assert_allclose(
            ours.column(name).to_numpy(zero_copy_only=False), local.column(name).to_numpy(zero_copy_only=False),
            rtol=0, atol=1e-6,
        )


def _bad_parts(folder):
    folder.mkdir()
    write_csv(folder / "a.csv", [("1", "good")])
    write_csv(folder / "b.csv", [("2", "bad", "x")], header=("id", "text", "more"))
    return folder


BAD_PART = "differ from "


def test_ray_a_bad_part_is_one_error_line_and_nothing_is_written(ray_cluster, sentiment, tmp_path):
    folder = _bad_parts(tmp_path / "parts")
    result = batch_cli(sentiment, folder, "-o", tmp_path / "out", "--engine", "ray", env={"RAY_ADDRESS": ray_cluster.address})
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(f"b.csv: its columns (id, text, more) {BAD_PART}{folder / 'a.csv'}'s (id, text)")
    assert "Traceback" not in result.stderr  # Ray's logged stack traces are off; the failure is one line
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["parts"]


# -- Spark -------------------------------------------------------------------------


def _java() -> bool:
    return bool(shutil.which("java") or os.environ.get("JAVA_HOME"))


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    if not _java():
        pytest.skip("Spark needs Java (apt-get install openjdk-17-jre-headless)")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]").appName("keras-attn-tests")
        .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_udf_scores_a_column_in_the_users_own_job(spark, sentiment):
    from export.engines.spark import scores_udf

    texts = [*TEXTS, None, *many_texts(300)]
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, body string").repartition(3)
    scores = scores_udf(spark, sentiment)
    scored = frame.withColumn("s", scores("body")).select("id", "body", "s.*").orderBy("id")
    table = pa.Table.from_pylist([row.asDict() for row in scored.collect()])
    assert table.column("id").to_pylist() == list(range(len(texts)))
    missing = texts.index(None)
    assert table.column("label")[missing].as_py() is None and table.column("score_positive")[missing].as_py() is None
    kept = [i for i, t in enumerate(texts) if t is not None]
    scored_rows = table.take(kept).cast(
        pa.schema([(f.name, pa.float32() if pa.types.is_floating(f.type) else f.type) for f in table.schema])
    )
    check_scored(scored_rows, sentiment, [texts[i] for i in kept])


def test_spark_cli_reads_quoted_line_breaks_and_matches_the_local_engine(sentiment, tmp_path):
    if not _java():
        pytest.skip("Spark needs Java")
    pytest.importorskip("pyspark")
    rows = [(str(i), text) for i, text in enumerate([*TEXTS, *many_texts(500)])]
    source = write_csv(tmp_path / "in.csv", rows)
    result = batch_cli(sentiment, source, "-o", tmp_path / "spark", "--engine", "spark", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"read {len(rows)} rows, scored {len(rows)}, 0 without text")
    # Only the JVM's own line about its modules, which no logging setting turns off.
    assert [line for line in result.stderr.splitlines()[:-1] if "incubator" not in line] == []
    table = pq.read_table(tmp_path / "spark")
    order = sorted(range(len(rows)), key=lambda k: table.column("id")[k].as_py())
    table = table.take(order)
    assert sorted(table.column("id").to_pylist()) == sorted(r[0] for r in rows)
    texts = {r[0]: r[1] for r in rows}
    assert table.column("text").to_pylist() == [texts[i] for i in table.column("id").to_pylist()]
    check_scored(table, sentiment, table.column("text").to_pylist())


def test_spark_a_bad_part_is_one_error_line_and_nothing_is_written(sentiment, tmp_path):
    if not _java():
        pytest.skip("Spark needs Java")
    pytest.importorskip("pyspark")
    folder = _bad_parts(tmp_path / "parts")
    result = batch_cli(sentiment, folder, "-o", tmp_path / "out", "--engine", "spark")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "incubator" not in line]
    assert lines == [f"error: {folder / 'b.csv'}: its columns (id, text, more) {BAD_PART}{folder / 'a.csv'}'s (id, text)"]
    assert not (tmp_path / "out").exists()


def test_spark_without_java_is_one_line_naming_the_package(sentiment, tmp_path):
    pytest.importorskip("pyspark")
    source = write_csv(tmp_path / "in.csv", [("1", "good")])
    env = {"PATH": os.path.dirname(sys.executable), "JAVA_HOME": ""}
    result = batch_cli(sentiment, source, "-o", tmp_path / "out", "--engine", "spark", env=env)
    assert result.returncode == 1
    assert result.stderr == "error: Spark needs Java, and there is none here: apt-get install openjdk-17-jre-headless\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("engine", "module", "extra"), [("ray", "ray", "ray"), ("spark", "pyspark", "spark")])
def test_an_engine_not_installed_names_its_extra(sentiment, tmp_path, engine, module, extra):
    source = write_csv(tmp_path / "in.csv", [("1", "good")])
    code = (
        f"import sys; sys.modules[{module!r}] = None; from export.batch import console; "
        f"sys.argv = ['x', {str(sentiment)!r}, {str(source)!r}, '-o', {str(tmp_path / 'out')!r}, '--engine', {engine!r}]; "
        "sys.exit(console())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and f'pip install "keras-attn[{extra}]"' in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


# -- Ray Serve ---------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_serve(ray_cluster, sentiment):
    """`export.ray_serve.build_app` deployed with two replicas; yields "127.0.0.1:PORT"."""
    serve = pytest.importorskip("ray.serve")
    from export.ray_serve import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": str(sentiment), "num_replicas": "2"}), name="keras_attn", route_prefix="/")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_ray_serve_answers_tritonclient_by_text_like_textclassifier(ray_serve, sentiment):
    import tritonclient.http as triton

    from export.runtime import TextClassifier

    texts = ["What a wonderful film", "The battery died after a week, terrible"]
    client = triton.InferenceServerClient(ray_serve)
    assert client.is_server_ready() and client.is_model_ready("sentiment")
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object))
    outputs = [triton.InferRequestedOutput("probability"), triton.InferRequestedOutput("label")]
    result = client.infer("sentiment", [text], outputs=outputs)
    classifier = TextClassifier(sentiment)
    expected = classifier.predict_proba(texts)
    np.testing.assert_allclose(result.as_numpy("probability").reshape(len(texts), -1)[:, -1], expected[:, 1], atol=1e-6)
    assert [v.decode() for v in result.as_numpy("label").ravel()] == [p.label for p in classifier.predict(texts)]


def test_ray_serve_replaces_a_killed_replica_and_keeps_answering(ray_serve):
    import signal
    import threading
    import time

    import httpx
    from ray.util.state import list_actors

    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["great"]}]}
    url = f"http://{ray_serve}/v2/models/sentiment/infer"
    results = {"ok": 0, "failed": 0}
    stop = threading.Event()

    def client():
        while not stop.is_set() and sum(results.values()) < 5000:
            try:
                ok = httpx.post(url, json=body, timeout=10).status_code == 200
            except httpx.TransportError:
                ok = False
            results["ok" if ok else "failed"] += 1

    def replicas():
        return {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000) if "ServeReplica" in a.class_name}

    before = replicas()
    assert len(before) == 2
    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    victim = next(a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000) if "ServeReplica" in a.class_name)
    os.kill(victim.pid, signal.SIGKILL)  # the replica's process, as the kernel's OOM killer would
    answered_before = results["ok"]
    deadline = time.monotonic() + 60
    while not (len(replicas()) == 2 and victim.actor_id not in replicas()):
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.5)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert results["ok"] > answered_before + 10  # it kept answering, and answers after the replacement
    # Only what was in flight on the killed replica may fail: two clients, one request each.
    assert results["failed"] <= 2, results


def test_ray_serve_arguments_are_read_as_serve_run_gives_them():
    from export.ray_serve import settings_from

    settings, replicas, ongoing = settings_from(
        {"models": "a.onnx,b.onnx", "num_replicas": "3", "max_delay_ms": "2.5", "max_ongoing_requests": "16"}
    )
    assert settings.models == ("a.onnx", "b.onnx") and (replicas, ongoing) == (3, 16)
    assert settings.max_delay_ms == 2.5 and settings.threads == 1  # a replica holds one CPU
    with pytest.raises(ValueError, match="^no model: give model=FILE.onnx"):
        settings_from({"num_replicas": "2"})
    with pytest.raises(ValueError, match="^unknown argument 'replicas'; expected model"):
        settings_from({"model": "a.onnx", "replicas": "2"})
    with pytest.raises(ValueError, match="^num_replicas must be a number, got 'two'$"):
        settings_from({"model": "a.onnx", "num_replicas": "two"})
    with pytest.raises(ValueError, match="must be >= 1"):
        settings_from({"model": "a.onnx", "num_replicas": "0"})

"""export.batch and export.engines.local: score tables of texts into Parquet, checked against TextClassifier."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from serve_models import pair, sentiment  # noqa: F401 - fixtures

from export.batch import main
from export.engines.local import score_files
from export.runtime import TextClassifier
from export.tables import TableError, read_table
from test_export_support import ROOT as REPO, run_module

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [
    "What a wonderful film",
    "The battery died after a week, terrible",
    'A "quoted" word, a comma\nand a line break',
    "",
    "日本語 🙂 \u2028 mixed ok",
    "good " * 300,
]


def write_csv(path, rows, header=("id", "text"), dialect="excel"):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, dialect)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def expected(model, texts):
    classifier = TextClassifier(model)
    scores = classifier.predict_proba(texts)
    labels = [p.label for p in classifier.predict(texts)]
    return classifier.labels, labels, scores


def check_scored(table, model, texts):
    labels_order, labels, scores = expected(model, texts)
    assert table.column_names[-2 - len(labels_order):] == ["label", "probability", *(f"score_{c}" for c in labels_order)]
    assert table.column("label").to_pylist() == labels
    for k, name in enumerate(labels_order):
        got = table.column(f"score_{name}")
        assert got.type == pa.float32()
        np.testing.assert_allclose(got.to_numpy(), scores[:, k], rtol=0, atol=1e-6)
    chosen = scores[np.arange(len(texts)), [labels_order.index(label) for label in labels]]
    np.testing.assert_allclose(table.column("probability").to_numpy(), chosen, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_csv_and_tsv_keep_every_column_and_get_predict_probas_numbers(sentiment, tmp_path, kind):
    rows = [(str(i), text, f"extra {i}") for i, text in enumerate(TEXTS)]
    source = write_csv(tmp_path / f"in.{kind}", rows, ("id", "text", "note"), "excel-tab" if kind == "tsv" else "excel")
    summary = score_files(sentiment, read_table(source), tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == [r[0] for r in rows]
    assert table.column("text").to_pylist() == TEXTS and table.column("note").to_pylist() == [r[2] for r in rows]
    check_scored(table, sentiment, TEXTS)
    assert (summary.rows_read, summary.rows_scored, summary.rows_without_text) == (len(TEXTS), len(TEXTS), 0)


def test_missing_texts_keep_their_place_with_nulls(sentiment, tmp_path):
    lines = [{"id": 1, "text": "great fun"}, {"id": 2}, {"id": 3, "text": None, "stars": 4.5}, {"id": 4, "text": "awful"}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    summary = score_files(sentiment, read_table(source), tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == [1, 2, 3, 4]  # JSON numbers stay numbers
    assert table.column("stars").to_pylist() == [None, None, 4.5, None]
    assert table.column("label").to_pylist()[1:3] == [None, None]
    assert table.column("score_positive").to_pylist()[1:3] == [None, None]
    check_scored(table.take([0, 3]), sentiment, ["great fun", "awful"])
    assert (summary.rows_read, summary.rows_scored, summary.rows_without_text) == (4, 2, 2)


def test_a_folder_of_parquet_parts_in_small_batches(sentiment, tmp_path):
    folder = tmp_path / "lake"
    folder.mkdir()
    texts = [f"sentence {i} was {'good' if i % 3 else 'bad'}" for i in range(50)]
    for p in range(3):  # as Spark writes it: parts and a _SUCCESS marker
        part = texts[p * 17 : (p + 1) * 17]
        pq.write_table(pa.table({"text": part, "n": list(range(len(part)))}), folder / f"part-{p:05d}.parquet")
    (folder / "_SUCCESS").write_text("")
    summary = score_files(sentiment, read_table(folder), tmp_path / "out", batch_rows=4)
    table = pq.read_table(tmp_path / "out")
    assert table.column("text").to_pylist() == texts and summary.rows_read == 50
    check_scored(table, sentiment, texts)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"part-{p:05d}.parquet" for p in range(3)]


def test_a_three_class_model(tmp_path):
    import keras

    from export.text import TextEncoder
    from export.to_onnx import convert
    from keras_attn.models import build_text_classifier

    keras.utils.set_random_seed(0)
    encoder = TextEncoder.fit(TEXTS, num_words=30, seq_len=12, labels=("billing", "sales", "tech"))
    model = build_text_classifier(encoder.vocab_size, 3, seq_len=12, units=8, embedding_dim=4)
    convert(model, tmp_path / "three.onnx", encoder=encoder)
    source = write_csv(tmp_path / "in.csv", [(str(i), t) for i, t in enumerate(TEXTS)])
    score_files(tmp_path / "three.onnx", read_table(source), tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert [n for n in table.column_names if n.startswith("score_")] == ["score_billing", "score_sales", "score_tech"]
    check_scored(table, tmp_path / "three.onnx", TEXTS)


# -- the command line -----------------------------------------------------------


def test_cli_prints_one_summary_line_and_keeps_an_existing_output(sentiment, tmp_path, capsys):
    source = write_csv(tmp_path / "in.csv", [(str(i), t) for i, t in enumerate(TEXTS)])
    assert main([str(sentiment), str(source), "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"read {len(TEXTS)} rows, scored {len(TEXTS)}, 0 without text, in ")
    assert captured.err.endswith(" rows/s)\n") and captured.err.count("\n") == 1
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        main([str(sentiment), str(source), "-o", str(tmp_path / "out")])
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert main([str(sentiment), str(source), "-o", str(tmp_path / "out"), "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such file or folder"),
        ("id,body\n1,hello\n", [], "no text column 'text'; the columns are 'id', 'body'"),
        ("id,text\n1,fine\n2,\"unclosed\n", ["--batch-size", "1"], "in.csv:3: cannot parse this CSV record"),
        ("id,text\n1,fine\n2,two,fields\n", ["--batch-size", "1"], "in.csv:3: 3 fields where the header has 2"),
        ("id,label\n1,x\n", ["--text-column", "id"], "the input already has a column 'label'"),
    ],
)
def test_cli_bad_input_is_one_error_line_and_writes_nothing(sentiment, tmp_path, content, args, message):
    source = tmp_path / "in.csv"
    if content is not None:
        source.write_text(content, encoding="utf-8")
    proc = run_module("export.batch", sentiment, source, "-o", tmp_path / "out", *args, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.csv"] if content is not None else [])


def test_cli_refuses_a_model_that_is_not_a_text_model(pair, tmp_path):
    source = write_csv(tmp_path / "in.csv", [("1", "hello")])
    proc = run_module("export.batch", pair, source, "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "text encoder" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_help_and_argument_errors(tmp_path):
    proc = run_module("export.batch", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--text-column" in proc.stdout and "--overwrite" in proc.stdout
    proc = run_module("export.batch", "m.onnx", "in.csv", "-o", "out", "--batch-size", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--batch-size" in proc.stderr


def test_tables_refuse_mixed_part_formats_and_a_bad_jsonl_line(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_csv(folder / "a.csv", [("1", "x")])
    (folder / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(TableError, match="mix formats"):
        read_table(folder)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(TableError, match="bad.jsonl:2: not valid JSON"):
        list(read_table(bad).batches())


def test_without_pyarrow_the_cli_names_the_extra(sentiment, tmp_path):
    source = write_csv(tmp_path / "in.csv", [("1", "hello")])
    code = "import sys, runpy\nsys.modules['pyarrow'] = None\nrunpy.run_module('export.batch', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code, str(sentiment), str(source), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and done.stderr == 'error: pyarrow is not installed: reading and writing tables needs pip install "keras-attn[batch]"\n'
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_batch_benchmark_runs_in_its_smoke_mode(sentiment, tmp_path):
    out = tmp_path / "batch.json"
    proc = run_module("benchmarks.batch", "--smoke", "--model", sentiment, "--json", out, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert {"predict_proba_rows_s", "engine_rows_s", "speedup", "parquet_mib", "csv_mib", "machine"} <= set(figures)
    assert figures["rows"] == 2000 and figures["big_rows"] == 5000
    assert "peak RSS, CSV input" in proc.stdout and proc.stdout.count("PASS") + proc.stdout.count("FAIL") == 3

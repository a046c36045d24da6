"""Both command-line tools in subprocesses: the main job, bad inputs, odd texts."""

import json
import zipfile
from pathlib import Path

import keras
import pytest

from export.to_onnx import convert
from keras_attn.saving import save_model
from test_export_support import ROOT, attention_model, run_module, sentiment

PRETRAINED = ROOT / "keras_attn" / "pretrained" / "sentiment.keras"


@keras.saving.register_keras_serializable(package="cli_test_only")
class Doubler(keras.layers.Layer):
    """Registered in this process only: the CLI's process cannot know it."""

    def call(self, x):
        return x * 2


def _files(folder):
    return sorted(p.name for p in Path(folder).rglob("*"))


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def dev_model(tmp_path_factory):
    path, _, _ = sentiment(tmp_path_factory.mktemp("dev"), name="dev.keras")
    return path


@pytest.fixture(scope="module")
def dev_onnx(dev_model):
    path = dev_model.with_suffix(".onnx")
    convert(dev_model, path)
    return path


# -- python -m export.to_onnx -----------------------------------------------


def test_help_describes_the_options(tmp_path):
    proc = run_module("export.to_onnx", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for option in ("--output", "--opset", "--quantize", "--no-verify", "--tolerance", "--debug", "MODEL"):
        assert option in proc.stdout


@pytest.mark.skipif(not PRETRAINED.is_file(), reason="the pretrained model is not bundled yet")
def test_main_job_converts_the_bundled_model(tmp_path):
    proc = run_module("export.to_onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sentiment.onnx").is_file()
    assert "probability" in proc.stdout and "max |diff|" in proc.stdout
    assert "Traceback" not in proc.stderr
    predict = run_module("export.predict", "sentiment.onnx", "a wonderful film", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr


def test_converts_a_model_file_into_the_current_folder(tmp_path, dev_model):
    proc = run_module("export.to_onnx", dev_model, "--quantize", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _files(tmp_path) == ["dev.int8.onnx", "dev.onnx"]
    out = proc.stdout
    for fragment in ("input   tokens int32 (batch, sequence)", "output  probability", "opset 17", "max |diff|", "int8 copy", "time"):
        assert fragment in out, out
    # Not on a terminal: no progress, and TensorFlow's start-up noise is gone.
    assert proc.stderr == ""


def test_debug_shows_progress(tmp_path, dev_model):
    proc = run_module("export.to_onnx", dev_model, "--debug", "--no-verify", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "converting" in proc.stderr and "not verified" in proc.stdout


def test_missing_file(tmp_path):
    _assert_one_line_error(run_module("export.to_onnx", "nope.keras", cwd=tmp_path), "nope.keras")
    assert _files(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path):
    proc = run_module("export.to_onnx", "nope.keras", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_file_that_is_not_a_keras_model(tmp_path):
    (tmp_path / "notes.keras").write_text("hello, not a model\n")
    _assert_one_line_error(run_module("export.to_onnx", "notes.keras", cwd=tmp_path), "not a Keras model")
    assert _files(tmp_path) == ["notes.keras"]


def test_zip_that_is_not_a_keras_model(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "just a zip")
    _assert_one_line_error(run_module("export.to_onnx", "other.keras", cwd=tmp_path), "cannot load")
    assert _files(tmp_path) == ["other.keras"]


def test_truncated_keras_archive(tmp_path, dev_model):
    data = dev_model.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    _assert_one_line_error(run_module("export.to_onnx", "cut.keras", cwd=tmp_path), "cut.keras")
    assert _files(tmp_path) == ["cut.keras"]


def test_unregistered_custom_layer(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Doubler(name="doubler")(inputs))
    save_model(model, tmp_path / "custom.keras")
    _assert_one_line_error(run_module("export.to_onnx", "custom.keras", cwd=tmp_path), "Doubler")
    assert _files(tmp_path) == ["custom.keras"]


def test_lambda_layer_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "lambda_ran"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x, p=str(marker): (open(p, "w").close(), x * 2)[1])(inputs)
    save_model(keras.Model(inputs, outputs), tmp_path / "lambda.keras")
    marker.unlink(missing_ok=True)  # building the model ran it once, here
    _assert_one_line_error(run_module("export.to_onnx", "lambda.keras", cwd=tmp_path), "Lambda")
    assert not marker.exists()
    assert _files(tmp_path) == ["lambda.keras"]


@pytest.mark.parametrize("target", ["missing/out.onnx", "afile/out.onnx", "."])
def test_output_folder_that_cannot_be_written(tmp_path, dev_model, target):
    (tmp_path / "afile").write_text("x")
    _assert_one_line_error(run_module("export.to_onnx", dev_model, "-o", target, cwd=tmp_path), "cannot write")
    assert _files(tmp_path) == ["afile"]


def test_bad_tolerance_exits_with_one_line_and_keeps_old_file(tmp_path, dev_model):
    (tmp_path / "dev.onnx").write_bytes(b"old export")
    proc = run_module("export.to_onnx", dev_model, "--tolerance", "-1", cwd=tmp_path)
    _assert_one_line_error(proc, "tolerance")
    assert (tmp_path / "dev.onnx").read_bytes() == b"old export"


# -- python -m export.predict -----------------------------------------------


def test_predict_texts_from_arguments(tmp_path, dev_onnx):
    proc = run_module("export.predict", dev_onnx, "a great film", "boring and slow", "--top-k", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, ["a great film", "boring and slow"]):
        label, probability = line.split()[:2]
        assert label in ("positive", "negative")
        assert 0 <= float(probability) <= 1
        assert line.endswith(text)
        assert line.count("(") == 2  # top-2 words


def test_predict_json_from_file_with_odd_texts(tmp_path, dev_onnx):
    texts = ["", "?!", "😀 great", "bad\x07\x1b[31mfilm", " ".join(["good"] * 10_000), "i loved the story"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    proc = run_module("export.predict", dev_onnx, "--file", "in.txt", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in records] == texts
    for record in records:
        assert record["label"] in ("positive", "negative")
        assert 0 <= record["probability"] <= 1
        assert isinstance(record["attention"], list)
    assert records[0]["attention"] == []
    assert [w for w, _ in records[-1]["attention"]] == ["i", "loved", "the", "story"]


def test_predict_reads_standard_input(tmp_path, dev_onnx):
    proc = run_module("export.predict", dev_onnx, cwd=tmp_path, stdin="a great film\n\nboring\n")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def test_predict_missing_model(tmp_path):
    _assert_one_line_error(run_module("export.predict", "nope.onnx", "hi", cwd=tmp_path), "nope.onnx")


def test_predict_model_without_encoder(tmp_path):
    convert(attention_model("scale_none"), tmp_path / "plain.onnx")
    _assert_one_line_error(run_module("export.predict", "plain.onnx", "hi", cwd=tmp_path), "text encoder")


def test_predict_missing_text_file(tmp_path, dev_onnx):
    _assert_one_line_error(run_module("export.predict", dev_onnx, "--file", "none.txt", cwd=tmp_path), "none.txt")

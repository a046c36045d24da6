"""The export and predict command lines, in this process where they can be: the main job, bad inputs, odd texts."""

import io
import json
import logging
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from export.cli import CliError, run
from export.predict import main as predict_main
from export.runtime import TextClassifier
from export.text import TextEncoder
from export.to_onnx import convert
from export.to_onnx import main as export_main
from keras_attn.saving import save_model
from test_export_support import ROOT, attention_model, run_module, sentiment
from test_runtime import LABELS, three_class_model

PRETRAINED = ROOT / "keras_attn" / "pretrained" / "sentiment.keras"


@keras.saving.register_keras_serializable(package="cli_test_only")
class Doubler(keras.layers.Layer):
    """Registered in this process only: the CLI's process cannot know it."""

    def call(self, x):
        return x * 2


def _files(folder):
    return sorted(p.name for p in Path(folder).rglob("*"))


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


def _export(argv, capsys, monkeypatch, cwd):
    """``python -m export.to_onnx argv`` in this process, in ``cwd``: (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    # The CLI quiets TensorFlow and logging for its process; give them back.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    try:
        status = run(export_main, [str(a) for a in argv])
    finally:
        logging.disable(logging.NOTSET)
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(result, *fragments):
    status, out, err = result
    assert status != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        export_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--output", "--opset", "--quantize", "--no-verify", "--tolerance", "--import", "--debug", "MODEL"):
        assert option in out


@pytest.mark.slow
@pytest.mark.skipif(not PRETRAINED.is_file(), reason="the pretrained model is not bundled yet")
def test_main_job_converts_the_bundled_model(tmp_path):
    proc = run_module("export.to_onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sentiment.onnx").is_file()
    assert "probability" in proc.stdout and "max |diff|" in proc.stdout
    assert proc.stderr == ""  # not on a terminal: no progress, no TensorFlow start-up lines
    predict = run_module("export.predict", "sentiment.onnx", "a wonderful film", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr


def test_converts_a_model_file_into_the_current_folder(tmp_path, dev_model, capsys, monkeypatch):
    status, out, err = _export([dev_model, "--quantize"], capsys, monkeypatch, tmp_path)
    assert status == 0, err
    assert _files(tmp_path) == ["dev.int8.onnx", "dev.onnx"]
    for fragment in ("input   tokens int32 (batch, sequence)", "output  probability", "opset 17", "max |diff|", "int8 copy", "time"):
        assert fragment in out, out
    assert err == ""  # not on a terminal: no progress


def test_debug_shows_progress(tmp_path, dev_model, capsys, monkeypatch):
    status, out, err = _export([dev_model, "--debug", "--no-verify"], capsys, monkeypatch, tmp_path)
    assert status == 0, err
    assert "converting" in err and "not verified" in out


def test_missing_file(tmp_path, capsys, monkeypatch):
    _assert_one_line_error(_export(["nope.keras"], capsys, monkeypatch, tmp_path), "nope.keras")
    assert _files(tmp_path) == []


def test_debug_raises_instead_of_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CliError, match="nope.keras"):
        run(export_main, ["nope.keras", "--debug"])


def test_file_that_is_not_a_keras_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.keras").write_text("hello, not a model\n")
    _assert_one_line_error(_export(["notes.keras"], capsys, monkeypatch, tmp_path), "not a Keras model")
    assert _files(tmp_path) == ["notes.keras"]


def test_zip_that_is_not_a_keras_model(tmp_path, capsys, monkeypatch):
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "just a zip")
    _assert_one_line_error(_export(["other.keras"], capsys, monkeypatch, tmp_path), "cannot load")
    assert _files(tmp_path) == ["other.keras"]


def test_truncated_keras_archive(tmp_path, dev_model, capsys, monkeypatch):
    data = dev_model.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    _assert_one_line_error(_export(["cut.keras"], capsys, monkeypatch, tmp_path), "cut.keras")
    assert _files(tmp_path) == ["cut.keras"]


@pytest.mark.slow
def test_unregistered_custom_layer(tmp_path):
    # A new process: Doubler is registered in this one only.
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Doubler(name="doubler")(inputs))
    save_model(model, tmp_path / "custom.keras")
    proc = run_module("export.to_onnx", "custom.keras", cwd=tmp_path)
    _assert_one_line_error((proc.returncode, proc.stdout, proc.stderr), "Doubler")
    assert "Traceback" not in proc.stderr
    assert _files(tmp_path) == ["custom.keras"]


def test_lambda_layer_is_refused_and_never_runs(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "lambda_ran"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x, p=str(marker): (open(p, "w").close(), x * 2)[1])(inputs)
    save_model(keras.Model(inputs, outputs), tmp_path / "lambda.keras")
    marker.unlink(missing_ok=True)  # building the model ran it once, here
    _assert_one_line_error(_export(["lambda.keras"], capsys, monkeypatch, tmp_path), "Lambda")
    assert not marker.exists()
    assert _files(tmp_path) == ["lambda.keras"]


@pytest.mark.parametrize("target", ["missing/out.onnx", "afile/out.onnx", "."])
def test_output_folder_that_cannot_be_written(tmp_path, dev_model, target, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    _assert_one_line_error(_export([dev_model, "-o", target], capsys, monkeypatch, tmp_path), "cannot write")
    assert _files(tmp_path) == ["afile"]


def test_bad_tolerance_exits_with_one_line_and_keeps_old_file(tmp_path, dev_model, capsys, monkeypatch):
    (tmp_path / "dev.onnx").write_bytes(b"old export")
    _assert_one_line_error(_export([dev_model, "--tolerance", "-1"], capsys, monkeypatch, tmp_path), "tolerance")
    assert (tmp_path / "dev.onnx").read_bytes() == b"old export"


# -- python -m export.predict -----------------------------------------------


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self):
        return True


def _predict(argv, capsys, monkeypatch, stdin=None, stderr=None):
    """``python -m export.predict argv`` in this process: (exit status, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", stdin)
    if stderr is not None:
        monkeypatch.setattr(sys, "stderr", stderr)
    status = run(predict_main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, stderr.getvalue() if stderr is not None else err


def test_predict_texts_from_arguments(dev_onnx, capsys, monkeypatch):
    status, out, err = _predict([dev_onnx, "a great film", "boring and slow", "--top-k", "2"], capsys, monkeypatch)
    assert status == 0 and err == ""
    lines = out.splitlines()
    expected = TextClassifier(dev_onnx).predict(["a great film", "boring and slow"])
    assert len(lines) == 2
    for line, prediction in zip(lines, expected):
        assert line.split()[:2] == [prediction.label, f"{prediction.probability:.3f}"]
        assert line.endswith(prediction.text)
        assert line.count("(") == 2  # top-2 words


def test_predict_json_from_file_with_odd_texts(tmp_path, dev_onnx, capsys, monkeypatch):
    texts = ["", "?!", "😀 great", "bad\x07\x1b[31mfilm", " ".join(["good"] * 10_000), "i loved the story", "a\r"]
    (tmp_path / "in.txt").write_bytes(("\n".join(texts) + "\n").encode("utf-8").replace(b"a\r\n", b"crlf\r\n"))
    status, out, _ = _predict([dev_onnx, "--file", tmp_path / "in.txt", "--json"], capsys, monkeypatch)
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    texts[-1] = "crlf"  # a Windows line end is not part of the text
    assert [r["text"] for r in records] == texts
    expected = TextClassifier(dev_onnx).predict(texts)
    for record, prediction in zip(records, expected):
        assert record["label"] == prediction.label and record["scores"] == prediction.scores
        assert record["truncated"] == prediction.truncated
    assert records[0]["attention"] == [] and records[4]["truncated"]
    assert [w for w, _ in records[-2]["attention"]] == ["i", "loved", "the", "story"]


def test_predict_reads_standard_input_in_order(dev_onnx, capsys, monkeypatch):
    texts = [f"text {i} " + "great " * (i % 7) for i in range(2500)]  # several chunks
    status, out, _ = _predict([dev_onnx, "--json"], capsys, monkeypatch, stdin=io.StringIO("\n".join(texts) + "\n"))
    assert status == 0
    assert [json.loads(line)["text"] for line in out.splitlines()] == texts


def test_predict_any_number_of_labels(tmp_path, capsys, monkeypatch):
    encoder = TextEncoder.fit(["awful film", "okay film", "great film"], num_words=10, seq_len=6, labels=LABELS)
    convert(three_class_model(encoder.vocab_size), tmp_path / "three.onnx", encoder=encoder)
    status, out, _ = _predict([tmp_path / "three.onnx", "--json", "great film", "awful"], capsys, monkeypatch)
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    for record, prediction in zip(records, TextClassifier(tmp_path / "three.onnx").predict(["great film", "awful"])):
        assert list(record["scores"]) == list(LABELS)
        assert record["label"] == prediction.label == max(record["scores"], key=record["scores"].get)


def test_predict_on_a_bare_terminal_prints_usage_instead_of_waiting(dev_onnx, capsys, monkeypatch):
    status, out, err = _predict([dev_onnx], capsys, monkeypatch, stdin=_Terminal("never read\n"))
    assert status == 2 and out == ""
    assert err.startswith("usage: python -m export.predict")
    assert sys.stdin.read() == "never read\n"


def test_predict_progress_only_on_a_terminal(dev_onnx, capsys, monkeypatch):
    texts = "".join(f"line {i}\n" for i in range(3000))
    status, _, err = _predict([dev_onnx], capsys, monkeypatch, stdin=io.StringIO(texts))
    assert status == 0 and err == ""
    monkeypatch.setattr("export.predict._Progress.interval", 0.0)  # redraw at every chunk
    status, _, err = _predict([dev_onnx], capsys, monkeypatch, stdin=io.StringIO(texts), stderr=_Terminal())
    assert status == 0 and "\r3,000 lines in " in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["nope.onnx", "hi"], "nope.onnx"),
        (["{onnx}", "--file", "none.txt"], "none.txt"),
        (["{onnx}", "hi", "--file", "x.txt"], "not both"),
        (["{onnx}", "hi", "--top-k", "-1"], "--top-k"),
        (["{onnx}", "hi", "--threads", "0"], "--threads"),
    ],
)
def test_predict_errors_are_one_line(dev_onnx, capsys, monkeypatch, argv, fragment):
    status, out, err = _predict([a.format(onnx=dev_onnx) for a in argv], capsys, monkeypatch)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


def test_predict_model_without_encoder(tmp_path, capsys, monkeypatch):
    convert(attention_model("scale_none"), tmp_path / "plain.onnx")
    status, _, err = _predict([tmp_path / "plain.onnx", "hi"], capsys, monkeypatch)
    assert status == 1 and "text encoder" in err


@pytest.mark.slow
def test_predict_answers_before_the_input_ends(dev_onnx, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "export.predict", str(dev_onnx)], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a reader that waits for the end fails, not hangs
    watchdog.start()
    try:
        proc.stdin.write("a great film\n")
        proc.stdin.flush()
        first = proc.stdout.readline()  # blocks until answered: the input is still open
        assert first.endswith("| a great film\n")
        proc.stdin.write("boring\n")
        proc.stdin.close()
        assert proc.stdout.read().endswith("| boring\n")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_predict_streams_a_large_file_in_flat_memory(dev_onnx, tmp_path):
    """100k lines through a pipe, peak memory (VmHWM) read by the process itself at exit."""
    rng = np.random.default_rng(0)
    words = ["great", "film", "boring", "the", "plot", "zyxxq", "😀"]
    lines = [" ".join(rng.choice(words, int(rng.integers(0, 30)))) for _ in range(100_000)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    peak = tmp_path / "peak.txt"
    code = (
        "import atexit, runpy, sys\n"
        "def peak():\n"
        f"    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        f"    open({str(peak)!r}, 'w').write(hwm)\n"
        "atexit.register(peak)\n"
        f"sys.argv = ['export.predict', {str(dev_onnx)!r}, '--json']\n"
        "runpy.run_module('export.predict', run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(tmp_path / "in.txt", "rb") as stdin, open(tmp_path / "out.jsonl", "wb") as stdout:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, stdin=stdin, stdout=stdout,
                              stderr=subprocess.PIPE, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(peak.read_text()) / 1024 < 200  # MiB
    with open(tmp_path / "out.jsonl", encoding="utf-8") as out:
        count = 0
        for count, (line, text) in enumerate(zip(out, lines), 1):
            if count % 9973 == 0:
                assert json.loads(line)["text"] == text
    assert count == len(lines)

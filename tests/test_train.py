"""Training: splits, refusals, a 3-class CSV end to end, and the bundled model retrained."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from export.cli import run
from keras_attn.data import LabelledTexts
from keras_attn.pretrained import PATH
from keras_attn.saving import load_model
from keras_attn.train import main, stratified_split, train

TOPICS = {
    "billing": ["invoice", "refund", "charge", "payment"],
    "sales": ["price", "quote", "discount", "demo"],
    "tech": ["crash", "error", "bug", "login"],
}
FILLER = ["the", "my", "please", "help", "with", "today", "again", "and", "it"]


def ticket_rows(n=180, seed=0):
    """(id, text, team) rows: one topic word decides the team, among fillers.

    Texts carry what CSV must quote: commas, quotes, line breaks.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        team = list(TOPICS)[i % 3]
        words = list(rng.choice(FILLER, rng.integers(3, 8)))
        words.insert(rng.integers(0, len(words) + 1), rng.choice(TOPICS[team]))
        text = " ".join(words)
        if i % 5 == 0:
            text = f'She said "{text}", twice'
        if i % 7 == 0:
            text = f"{text}\r\nsecond line, too"
        rows.append((str(i), text, team))
    return rows


def write_csv(path, rows, header=("id", "body", "team")):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")  # CRLF, as Excel writes
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_stratified_split_holds_out_the_fraction_of_every_stratum():
    strata = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    rest, held = stratified_split(strata, 0.2, seed=1)
    assert sorted(np.concatenate([rest, held])) == list(range(100))
    assert [int((strata[held] == s).sum()) for s in "abc"] == [10, 6, 4]
    again, _ = stratified_split(strata, 0.2, seed=1)
    other, _ = stratified_split(strata, 0.2, seed=2)
    assert (again == rest).all() and not np.array_equal(other, rest)


@pytest.fixture(scope="module")
def ticket_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tickets")
    rows = ticket_rows()
    rows.insert(40, ("999", "a ticket nobody labelled", ""))
    # Texts the data layer and the model must take: empty, long, odd Unicode.
    rows.append(("1000", "", "tech"))
    rows.append(("1001", "price \u2028 日本語 🙂 \x85 " + "quote " * 5000, "sales"))
    data = write_csv(folder / "tickets.csv", rows)
    out = folder / "run"
    status = main([
        "--data", str(data), "--text-column", "body", "--label-column", "team",
        "--out", str(out), "--epochs", "6", "--learning-rate", "0.01",
        "--num-words", "40", "--seq-len", "16", "--seed", "3",
    ])
    assert status == 0
    return data, out, rows


def read_predictions(out):
    with open(out / "test_predictions.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_user_csv_run_writes_everything(ticket_run):
    _, out, rows = ticket_run
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "attention.png", "confusion.png", "history.json",
        "loss.png", "metrics.json", "model.keras", "test_predictions.csv"]
    for png in ("loss.png", "accuracy.png", "confusion.png", "attention.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "test_macro_f1", "test_loss", "per_class", "confusion_matrix",
            "sizes", "seed", "classes", "best_epoch"} <= set(metrics)
    assert metrics["classes"] == ["billing", "sales", "tech"]  # sorted
    assert metrics["seed"] == 3
    assert metrics["data"]["skipped_empty_labels"] == 1
    # 60, 61, 61 rows: 6 held out for test each, then round(5.4) = 5 and
    # round(5.5) = 6 twice for validation.
    assert metrics["sizes"] == {"train": 147, "validation": 17, "test": 18}
    assert metrics["options"]["test_fraction"] == metrics["options"]["validation_fraction"] == 0.1
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == metrics["epochs_run"]
    model = load_model(out / "model.keras")
    assert model.text_encoder.labels == ("billing", "sales", "tech")
    assert model.output["probability"].shape[-1] == 3


@pytest.mark.slow
def test_metrics_agree_with_numpy_on_the_saved_predictions(ticket_run):
    _, out, rows = ticket_run
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = read_predictions(out)
    classes = metrics["classes"]
    # The saved predictions are the saved model's, on test texts of the file.
    model = load_model(out / "model.keras")
    texts = [row["text"] for row in predictions]
    assert set(texts) <= {text for _, text, _ in rows}
    probability = model.predict(model.text_encoder.encode(texts), verbose=0)["probability"]
    saved = np.array([[float(row[f"P({c})"]) for c in classes] for row in predictions])
    np.testing.assert_allclose(saved, probability, atol=1e-5)
    assert [row["predicted"] for row in predictions] == [classes[i] for i in probability.argmax(1)]
    for row in predictions:  # each text keeps the label it has in the file
        assert (row["text"], row["label"]) in {(text, team) for _, text, team in rows}

    true = np.array([row["label"] for row in predictions])
    guess = np.array([row["predicted"] for row in predictions])
    assert metrics["test_accuracy"] == pytest.approx(np.mean(true == guess))
    f1s = []
    for name in classes:
        tp = np.sum((true == name) & (guess == name))
        precision = tp / max(np.sum(guess == name), 1)
        recall = tp / np.sum(true == name)
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        f1s.append(f1)
        assert metrics["per_class"][name] == pytest.approx(
            {"precision": precision, "recall": recall, "f1": f1, "support": np.sum(true == name)})
    assert metrics["test_macro_f1"] == pytest.approx(np.mean(f1s))
    matrix = metrics["confusion_matrix"]
    assert matrix["labels"] == classes
    assert matrix["counts"] == [[int(np.sum((true == a) & (guess == b))) for b in classes]
                                for a in classes]
    assert metrics["test_accuracy"] >= 0.8  # one word decides the class


@pytest.mark.slow
def test_export_serves_the_class_names(ticket_run, tmp_path, capsys):
    from export.predict import main as predict
    from export.runtime import TextClassifier
    from export.to_onnx import convert

    _, out, _ = ticket_run
    onnx_path = tmp_path / "tickets.onnx"
    convert(str(out / "model.keras"), str(onnx_path))
    classifier = TextClassifier(onnx_path)
    assert tuple(classifier.labels) == ("billing", "sales", "tech")
    model = load_model(out / "model.keras")
    texts = [row["text"] for row in read_predictions(out)] + ["", "refund please", "zzz qqq"]
    expected = model.predict(model.text_encoder.encode(texts), verbose=0)["probability"]
    np.testing.assert_allclose(classifier.predict_proba(texts), expected, atol=1e-5)
    labels = [prediction.label for prediction in classifier.predict(texts)]
    assert labels == [("billing", "sales", "tech")[i] for i in expected.argmax(1)]
    # The command line prints the class names too.
    capsys.readouterr()
    assert predict([str(onnx_path), "refund please", "login error"]) == 0
    shown = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert shown == [p.label for p in classifier.predict(["refund please", "login error"])]
    assert set(shown) <= {"billing", "sales", "tech"}


@pytest.mark.slow
def test_transformer_trains_exports_and_serves_text_end_to_end(tmp_path):
    import httpx
    import tritonclient.http as httpclient

    from export.runtime import TextClassifier
    from export.serve import Settings, create_app
    from export.to_onnx import convert
    from serve_models import running_server

    data = write_csv(tmp_path / "tickets.csv", ticket_rows())
    out = tmp_path / "run"
    assert main([
        "--data", str(data), "--text-column", "body", "--label-column", "team", "--encoder", "transformer",
        "--out", str(out), "--epochs", "8", "--learning-rate", "0.01", "--num-words", "40", "--seq-len", "16",
    ]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["encoder"] == "transformer" and metrics["test_accuracy"] >= 0.8
    model = load_model(out / "model.keras")
    assert model.get_layer("block2_attention").num_heads == 4
    report = convert(str(out / "model.keras"), str(tmp_path / "t.onnx"))
    assert {"probability", "attention", "attention_heads"} <= set(report.parity)
    texts = [row["text"] for row in read_predictions(out)] + ["", "refund please", "zzz qqq " * 10]
    expected = model.predict(model.text_encoder.encode(texts), verbose=0)["probability"]
    classifier = TextClassifier(tmp_path / "t.onnx")
    assert classifier.model.metadata["padding_free"] == "true"  # rows are cut at their last word
    np.testing.assert_allclose(classifier.predict_proba(texts), expected, atol=1e-5)
    # The server takes the text and names the class, as for the Conv1D model.
    with running_server(create_app(Settings(models=(str(tmp_path / "t.onnx"),)))) as url:
        client = httpclient.InferenceServerClient(url)
        tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        result = client.infer("t", [tensor])
        np.testing.assert_allclose(result.as_numpy("probability"), expected, atol=1e-5)
        labels = [v.decode() for v in result.as_numpy("label").ravel()]
        assert labels == [("billing", "sales", "tech")[i] for i in expected.argmax(1)]
        client.close()
        assert httpx.get(f"http://{url}/v2/models/t").json()["name"] == "t"


@pytest.mark.slow
def test_same_seed_same_run_and_balanced_weights(tmp_path):
    rng = np.random.default_rng(1)
    texts = [f"{'good' if i % 4 else 'bad'} {' '.join(rng.choice(FILLER, 3))}" for i in range(120)]
    data = LabelledTexts(texts, np.array([int(i % 4 > 0) for i in range(120)]),
                         ("bad", "good"), "toy", origin="toy")
    options = dict(epochs=2, seed=3, learning_rate=0.01, num_words=30, seq_len=8)
    first = train(data, tmp_path / "a", **options)
    again = train(data, tmp_path / "b", **options)
    for key in ("test_accuracy", "test_loss", "epochs_run", "per_class"):
        assert again[key] == first[key]
    weighted = train(data, tmp_path / "c", class_weight="balanced", **options)
    assert weighted["options"]["class_weight"] == "balanced"
    assert weighted["test_loss"] != first["test_loss"]
    assert load_model(tmp_path / "a" / "model.keras").text_encoder.labels == ("bad", "good")


def refuse(argv, capsys):
    """Exit status and stderr lines of the CLI."""
    status = run(main, argv)
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        (None, [], "missing.csv: no such file"),
        (b"body,team\nhi,a\n", [], "tickets.csv: no text column 'text'; the columns are 'body', 'team'"),
        (b"text,team\nhi,a\n", [], "tickets.csv: no label column 'label'; the columns are 'text', 'team'"),
        (b"text,label\nhi,a\nho,a\nhu,\n", [], "tickets.csv: only the class 'a' in column 'label'"),
        (b"text,label\n" + b"x,a\n" * 20 + b"y,b\n" * 5, [], "tickets.csv: class 'b' has 5 rows, too few"),
        (b"text,label\nfine,a\n\"unclosed,b\nmore,a\n", [], "tickets.csv:3: cannot parse"),
        (b"text,label\nfine,a\none, two,b\n", [], "tickets.csv:3: 3 fields where the header has 2"),
        (b"text,label\nfine,a\n\xff,b\n", [], "tickets.csv:3: not valid UTF-8"),
        (b"text,label\nfine,a\nfine,c\n", ["--labels", "a,b"], "tickets.csv:3: label 'c' is not one of"),
        (b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n', ["--format", "jsonl"],
         "tickets.csv:2: not valid JSON"),
    ],
)
def test_refusals_name_the_file_and_leave_no_folder(tmp_path, capsys, content, args, expected):
    data = tmp_path / ("missing.csv" if content is None else "tickets.csv")
    if content is not None:
        data.write_bytes(content)
    out = tmp_path / "runs" / "run"
    status, lines = refuse(["--data", str(data), "--out", str(out), *args], capsys)
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_folder_is_refused_as_unreadable(tmp_path, capsys):
    status, lines = refuse(["--data", str(tmp_path), "--format", "csv",
                            "--out", str(tmp_path / "run")], capsys)
    assert status == 1 and len(lines) == 1 and "is a folder" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--batch-size", "-1"], "--batch-size must be >= 1"),
        (["--learning-rate", "0"], "--learning-rate must be > 0"),
        (["--val-split", "1.5"], "--val-split must be between 0 and 1"),
        (["--test-split", "0.6", "--val-split", "0.5"], "sum < 1"),
        (["--pooled-dropout", "1"], "--pooled-dropout must be in [0, 1)"),
        (["--labels", "a"], "--labels applies to --data FILE only"),
        (["--data", "x.csv", "--labels", "a,a"], "--labels must name 2 or more distinct"),
        (["--data", "x.csv", "--data-dir", "d"], "not both"),
        (["--epochs", "ten"], "invalid int value"),
    ],
)
def test_bad_options_exit_2_with_one_line_before_reading(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as stop:
        main([*args, "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    data = write_csv(tmp_path / "t.csv", ticket_rows(30))
    status, lines = refuse(["--data", str(data), "--text-column", "body", "--label-column",
                            "team", "--out", str(out)], capsys)
    assert status == 1 and len(lines) == 1 and "--overwrite" in lines[0]
    assert (out / "metrics.json").read_text() == "{}"


@pytest.mark.slow
def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "keras_attn.train", "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ("--data ", "--text-column", "--labels", "--val-split", "--class-weight", "--data-dir"):
        assert flag in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KERAS_ATTN_DATA"),
                    reason="KERAS_ATTN_DATA is not set")
def test_training_command_reproduces_the_bundled_model(tmp_path):
    bundled = json.loads(PATH.with_name("metrics.json").read_text())
    result = subprocess.run([sys.executable, "-m", "keras_attn.train", "--seed", "0",
                             "--out", str(tmp_path / "run")],
                            check=True, capture_output=True, text=True)
    # Not a terminal: no progress bar, no escape codes.
    assert "\x1b" not in result.stderr + result.stdout and "\b" not in result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["sizes"]["test"] == 600
    assert metrics["data_sha256"] == bundled["data_sha256"]
    # Every option the bundled run recorded (later versions record more).
    assert {k: metrics["options"][k] for k in bundled["options"]} == bundled["options"]
    assert metrics["sizes"] == bundled["sizes"]
    assert metrics["classes"] == ["negative", "positive"]
    # What a seed decides is exact on any CPU: the split, every prediction's
    # side of 0.5, the epoch whose weights were kept. Float sums differ
    # between CPUs (AVX-512 or not, AMD or Intel), so the loss matches to
    # 1e-4 relative (measured: 5e-5 between an AMD EPYC and an Intel Xeon).
    assert metrics["test_accuracy"] == bundled["test_accuracy"]
    assert metrics["test_accuracy_by_source"] == bundled["test_accuracy_by_source"]
    assert metrics["best_epoch"] == bundled["best_epoch"]
    assert metrics["test_loss"] == pytest.approx(bundled["test_loss"], rel=1e-4)


def test_quality_report_states_mean_std_and_the_goal():
    from benchmarks.quality import report

    rows = lambda values: [{"seed": i, "accuracy": v, "macro_f1": v} for i, v in enumerate(values)]  # noqa: E731
    text = report({"site": {"ours": rows([0.8, 0.9, 0.85]), "baseline": rows([0.86, 0.86, 0.86])}})
    assert f"| {np.mean([0.8, 0.9, 0.85]):.3f} +- {np.std([0.8, 0.9, 0.85], ddof=1):.3f} |" in text
    assert "**FAIL** site: our mean macro-F1 0.850 vs baseline 0.860" in text


def test_quality_baseline_learns_the_deciding_word():
    from benchmarks.quality import baseline_predictions

    rows = ticket_rows(150)
    labels = np.array([list(TOPICS).index(team) for _, _, team in rows])
    order = np.arange(150)
    predicted, c = baseline_predictions([text for _, text, _ in rows], labels,
                                        order[:100], order[100:120], order[120:])
    assert np.mean(predicted == labels[120:]) >= 0.9 and c > 0


@pytest.mark.skipif(not os.environ.get("KERAS_ATTN_DATA"), reason="KERAS_ATTN_DATA is not set")
def test_quality_site_task_labels_each_sentence_with_its_file():
    from benchmarks.quality import site_task
    from keras_attn.data import load_sentences

    sentences = load_sentences()
    site = site_task(sentences)
    assert site.classes == ("amazon", "imdb", "yelp")
    assert [site.classes[i] for i in site.labels] == sentences.sources
    assert site.texts == sentences.texts and site.sources is None


def drawn_figure(monkeypatch):
    """Keeps the figure a plot function would close, to look at what it drew."""
    import keras_attn.plots as plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    return plots, figures


def test_attention_panels_span_their_own_range_with_a_labelled_colour_bar(tmp_path, monkeypatch):
    plots, figures = drawn_figure(monkeypatch)
    narrow = np.array([[0.15, 0.23], [0.2, 0.17]])
    wide = np.array([[0.9, 0.1], [0.4, 0.6]])
    plots.plot_attention([("a", ["x", "y"], narrow), ("b", ["u", "v"], wide)], tmp_path / "a.png")
    fig = figures[0]
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert [tuple(image.get_clim()) for image in images] == [(0.15, 0.23), (0.1, 0.9)]
    bars = [ax for ax in fig.axes if not ax.images]
    assert [bar.get_ylabel() for bar in bars] == ["attention weight"] * 2
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_confusion_plot_labels_axes_and_counts_every_cell(tmp_path, monkeypatch):
    plots, figures = drawn_figure(monkeypatch)
    counts = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    plots.plot_confusion(counts, ["billing", "sales", "tech"], tmp_path / "c.png")
    ax = figures[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["billing", "sales", "tech"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["billing", "sales", "tech"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(counts[i, j]) for i in range(3) for j in range(3)}


@pytest.mark.slow
def test_progress_bar_only_on_a_terminal(tmp_path):
    import pty
    import threading

    data = write_csv(tmp_path / "t.csv", ticket_rows(60))
    primary, terminal = pty.openpty()
    shown = bytearray()

    def read_terminal():
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    result = subprocess.run(
        [sys.executable, "-m", "keras_attn.train", "--data", str(data), "--text-column", "body",
         "--label-column", "team", "--epochs", "1", "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=terminal, check=True, timeout=300,
    )
    os.close(terminal)
    reader.join(timeout=10)
    os.close(primary)
    # stderr is a terminal: Keras's progress bar (redrawn with escape codes).
    assert b"/step - accuracy" in shown and b"\x1b[" in shown
    # stdout is a pipe: the two result lines, plain text.
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("data: ") and lines[1].startswith("test accuracy")
    assert "\x1b" not in result.stdout.decode()

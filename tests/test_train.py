"""Training end to end on a small corpus made here, and on the real data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_attn.data import Sentences
from keras_attn.pretrained import PATH
from keras_attn.saving import load_model
from keras_attn.train import main, stratified_split, train

POSITIVE = ["good", "great", "love", "excellent", "fine", "nice"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "poor", "broken"]
FILLER = ["the", "phone", "movie", "food", "was", "really", "it", "and"]


def toy_corpus(n=240, seed=0):
    """Sentences whose label is set by one sentiment word among fillers."""
    rng = np.random.default_rng(seed)
    texts, labels, sources = [], [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, rng.integers(2, 8)))
        words.insert(rng.integers(0, len(words) + 1),
                     rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(label)
        sources.append(("amazon", "imdb", "yelp")[i % 3])
    return Sentences(texts, np.array(labels), sources, "toy")


def test_stratified_split_holds_out_the_fraction_of_every_stratum():
    strata = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    rest, held = stratified_split(strata, 0.2, seed=1)
    assert sorted(np.concatenate([rest, held])) == list(range(100))
    assert [int((strata[held] == s).sum()) for s in "abc"] == [10, 6, 4]
    again, _ = stratified_split(strata, 0.2, seed=1)
    other, _ = stratified_split(strata, 0.2, seed=2)
    assert (again == rest).all() and not np.array_equal(other, rest)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "toy"
    metrics = train(toy_corpus(), out, epochs=2, seed=3, verbose=0,
                    learning_rate=0.01, num_words=30, seq_len=10)
    return out, metrics


def test_two_epoch_run_writes_everything_and_learns(toy_run):
    out, metrics = toy_run
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "attention.png", "history.json", "loss.png",
        "metrics.json", "model.keras"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_accuracy"]) == 2
    # 6 strata of 40: 8 held out each, then 3 of the remaining 32 each.
    assert metrics["sizes"] == {"train": 174, "validation": 18, "test": 48}
    assert set(metrics["test_accuracy_by_source"]) == {"amazon", "imdb", "yelp"}
    assert metrics["test_accuracy"] >= 0.9  # one word decides the label
    for png in ("loss.png", "accuracy.png", "attention.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_saved_model_restores_its_encoder_and_predictions(toy_run):
    out, _ = toy_run
    model = load_model(out / "model.keras")
    ids = model.text_encoder.encode(["it was great", "awful phone"])
    probability = model.predict(ids, verbose=0)["probability"][:, 0]
    assert probability[0] > 0.5 > probability[1]


def test_same_seed_same_run(toy_run, tmp_path):
    _, metrics = toy_run
    again = train(toy_corpus(), tmp_path / "again", epochs=2, seed=3,
                  verbose=0, learning_rate=0.01, num_words=30, seq_len=10)
    for key in ("test_accuracy", "test_loss", "epochs_run"):
        assert again[key] == metrics[key]


def test_cli_refuses_to_overwrite_a_run(toy_run, capsys):
    out, _ = toy_run
    before = (out / "metrics.json").read_bytes()
    assert main(["--out", str(out), "--epochs", "1"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "keras_attn.train", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--data-dir" in result.stdout and "--preset" in result.stdout


@pytest.mark.skipif(not os.environ.get("KERAS_ATTN_DATA"),
                    reason="KERAS_ATTN_DATA is not set")
def test_training_command_reproduces_the_bundled_model(tmp_path):
    bundled = json.loads(PATH.with_name("metrics.json").read_text())
    subprocess.run([sys.executable, "-m", "keras_attn.train", "--seed", "0",
                    "--out", str(tmp_path / "run")],
                   check=True, capture_output=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["sizes"]["test"] == 600
    assert metrics["data_sha256"] == bundled["data_sha256"]
    assert metrics["options"] == bundled["options"]
    assert metrics["sizes"] == bundled["sizes"]
    # What a seed decides is exact on any CPU: the split, every prediction's
    # side of 0.5, the epoch whose weights were kept. Float sums differ
    # between CPUs (AVX-512 or not, AMD or Intel), so the loss matches to
    # 1e-4 relative (measured: 5e-5 between an AMD EPYC and an Intel Xeon).
    assert metrics["test_accuracy"] == bundled["test_accuracy"]
    assert metrics["test_accuracy_by_source"] == bundled["test_accuracy_by_source"]
    assert metrics["best_epoch"] == bundled["best_epoch"]
    assert metrics["test_loss"] == pytest.approx(bundled["test_loss"], rel=1e-4)

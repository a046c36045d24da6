"""export.runtime.SentimentPredictor against Keras, its input checks, threads and imports."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxruntime as ort

from export.runtime import METADATA_PADDING_FREE_KEY, Prediction, SentimentPredictor, _plan, read_metadata
from export.text import TextEncoder
from export.to_onnx import convert, load_keras
from test_export_support import (
    ROOT,
    SENTENCES,
    attention_model,
    keras_outputs,
    padded_ids,
    sentiment,
    trimmable_sentiment_model,
)

ODD_TEXTS = [
    "",
    "   ",
    "?!...;;",
    " ".join(["good"] * 10_000),
    "😀🎬👍 great 💩",
    "bad\x00\x07\x1b[31m\r\nfilm\t",
    "ÉNORME réussite, très drôle",
    "a" * 100_000,
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime")
    keras_path, _, _ = sentiment(folder)
    model = load_keras(keras_path)
    onnx_path = folder / "sentiment.onnx"
    convert(model, onnx_path)
    return model, onnx_path


@pytest.fixture(scope="module")
def predictor(exported):
    return SentimentPredictor(exported[1])


@pytest.fixture(scope="module")
def fixed_predictor(tmp_path_factory):
    """The tutorial's pooling (Flatten): a fixed sequence length, run untrimmed."""
    folder = tmp_path_factory.mktemp("fixed")
    keras_path, _, _ = sentiment(folder, pooling="flatten")
    convert(load_keras(keras_path), folder / "fixed.onnx")
    predictor = SentimentPredictor(folder / "fixed.onnx", chunk_size=7, threads=2)
    assert predictor._fixed_length
    return predictor


def test_fixed_length_model_runs_whole_rows(fixed_predictor):
    ids = padded_ids(np.random.default_rng(5), 150, 8, fixed_predictor.vocab_size)
    expected = _reference(fixed_predictor.path, ids)
    for rows in (ids, ids[:1], ids[:20]):
        got = fixed_predictor.run_ids(rows)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name][: len(rows)], rtol=0, atol=1e-6)


def test_predict_proba_matches_keras(exported, predictor):
    model, _ = exported
    ids = model.text_encoder.encode(SENTENCES)
    expected = keras_outputs(model, [ids], None)["probability"][:, 0]
    got = predictor.predict_proba(SENTENCES)
    assert got.shape == (len(SENTENCES),)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_run_ids_returns_model_outputs(exported, predictor):
    model, _ = exported
    ids = padded_ids(np.random.default_rng(1), 40, model.text_encoder.seq_len, model.text_encoder.vocab_size)
    out = predictor.run_ids(ids)
    expected = keras_outputs(model, [ids], None)
    assert set(out) == {"probability", "attention"}
    assert out["probability"].shape == (40, 1) and out["attention"].shape == (40, 8, 8)
    for name in out:
        np.testing.assert_allclose(out[name], expected[name], atol=1e-5)


@pytest.mark.parametrize("threads", [1, 3])
def test_chunking_and_threads_give_the_same_results(exported, threads):
    reference = SentimentPredictor(exported[1], chunk_size=10_000, threads=1)
    split = SentimentPredictor(exported[1], chunk_size=7, threads=threads)
    for n in (1, 50, 300):
        ids = padded_ids(np.random.default_rng(n), n, 8, split.vocab_size)
        a, b = split.run_ids(ids), reference.run_ids(ids)
        for name in a:
            assert a[name].shape == b[name].shape
            np.testing.assert_allclose(a[name], b[name], atol=1e-6)
    assert split.run_ids(ids[:0])["attention"].shape == (0, 8, 8)


def test_predict_labels_and_attention_over_words(exported, predictor):
    model, _ = exported
    encoder = model.text_encoder
    texts = SENTENCES + ["zzz unknownword great"]
    results = predictor.predict(texts)
    expected = keras_outputs(model, [encoder.encode(texts)], None)
    assert len(results) == len(texts)
    for text, result, p, weights in zip(texts, results, expected["probability"][:, 0], expected["attention"]):
        assert isinstance(result, Prediction) and result.text == text
        assert result.probability == pytest.approx(float(p), abs=1e-5)
        assert result.label == ("positive" if p >= 0.5 else "negative")
        words = encoder.tokens(text)
        assert [w for w, _ in result.attention] == words
        n = len(words)
        reference = np.mean(weights[:n, :n], axis=0)  # real query rows, real keys
        np.testing.assert_allclose([w for _, w in result.attention], reference, atol=1e-5)
        assert sum(w for _, w in result.attention) == pytest.approx(1.0, abs=1e-5)
    assert "[UNK]" in [w for w, _ in results[-1].attention]
    top = results[0].top(2)
    assert len(top) == 2 and top[0][1] >= top[1][1]
    json.dumps(results[0].to_dict())


def test_single_string_is_one_text(predictor):
    assert predictor.predict_proba("a great film").shape == (1,)
    assert len(predictor.predict("a great film")) == 1
    assert predictor.predict("a great film")[0].text == "a great film"


@pytest.mark.parametrize("text", ODD_TEXTS, ids=range(len(ODD_TEXTS)))
def test_odd_texts_get_an_answer(predictor, text):
    (result,) = predictor.predict([text])
    assert result.label in predictor.labels
    assert 0.0 <= result.probability <= 1.0
    assert len(result.attention) <= predictor.seq_len
    if result.attention:
        assert sum(w for _, w in result.attention) == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_gets_an_answer_aligned_with_its_words(predictor, text):
    (result,) = predictor.predict(text)
    assert 0.0 <= result.probability <= 1.0
    assert [w for w, _ in result.attention] == predictor.encoder.tokens(text)
    if result.attention:
        assert sum(w for _, w in result.attention) == pytest.approx(1.0, abs=1e-5)
        assert all(w >= 0 for _, w in result.attention)


def test_empty_text_has_no_attention(predictor):
    assert predictor.predict("!!!")[0].attention == ()


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.zeros((2, 8), np.float32) + 0.5, "integers"),
        (np.zeros((2, 8), bool), "integers"),
        (np.array(["a"] * 8)[None], "integers"),
        (np.zeros(8, np.int32), "shape"),
        (np.zeros((2, 8, 1), np.int32), "shape"),
        (np.full((2, 8), 10_000, np.int64), "outside the vocabulary"),
        (np.full((2, 8), -1, np.int32), "outside the vocabulary"),
        ([[1, 2], [3]], "ids"),
    ],
)
def test_run_ids_validates_input(predictor, ids, message):
    with pytest.raises(ValueError, match=message):
        predictor.run_ids(ids)


def test_fixed_length_model_refuses_another_width(fixed_predictor):
    for width in (7, 9):
        with pytest.raises(ValueError, match="shape"):
            fixed_predictor.run_ids(np.zeros((2, width), np.int32))
        with pytest.raises(ValueError, match="shape"):
            fixed_predictor.run_ids(np.zeros((1, width), np.int32))


def test_run_ids_validates_a_single_row(predictor):
    for row, message in [([[2, 3, 10_000]], "outside the vocabulary"), ([[2, -1, 0]], "outside the vocabulary")]:
        with pytest.raises(ValueError, match=message):
            predictor.run_ids(np.array(row, np.int32))


def test_run_ids_accepts_other_integer_types(predictor):
    ids = [[2, 3, 4, 0, 0, 0, 0, 0]]
    a = predictor.run_ids(ids)["probability"]
    for dtype in (np.int64, np.uint8, np.uint64, np.int16):
        np.testing.assert_array_equal(predictor.run_ids(np.array(ids, dtype))["probability"], a)
    # A non-contiguous view is fine too.
    wide = np.array([[2, 9, 3, 9, 4, 9] + [0] * 10], np.int32)
    np.testing.assert_array_equal(predictor.run_ids(wide[:, ::2])["probability"], a)


def test_non_string_text_is_refused(predictor):
    with pytest.raises(TypeError):
        predictor.predict_proba([1, 2])


def test_threads_share_one_predictor(predictor):
    texts = [f"{SENTENCES[i % len(SENTENCES)]} {'great ' * (i % 5)}" for i in range(64)]
    serial = {i: predictor.predict_proba(texts[i]) for i in range(len(texts))}
    # Every 50th call is a large batch, split over the predictor's own pool.
    many = texts * 5
    serial_many = predictor.predict_proba(many)
    failures = []

    def worker(k):
        try:
            for j in range(500):
                if j % 50 == 49:
                    if not np.array_equal(predictor.predict_proba(many), serial_many):
                        failures.append((k, j, "batch"))
                    continue
                i = (k * 31 + j) % len(texts)
                if not np.array_equal(predictor.predict_proba(texts[i]), serial[i]):
                    failures.append((k, j))
        except Exception as error:  # pragma: no cover - reported below
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_file_without_encoder_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    convert(attention_model("scale_none"), path)
    with pytest.raises(ValueError, match="no text encoder"):
        SentimentPredictor(path)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        SentimentPredictor(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="not a usable ONNX model"):
        SentimentPredictor(tmp_path / "junk.onnx")


def test_runtime_never_imports_tensorflow_or_keras(exported, tmp_path):
    code = (
        "import sys\n"
        "import export.runtime\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from export.runtime import SentimentPredictor\n"
        f"p = SentimentPredictor({str(exported[1])!r})\n"
        "p.predict(['a great film', ''])\n"
        "p.predict_proba('boring')\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


# -- models with a dynamic sequence axis: rows cut at their last word ----------


def _reference(path, ids):
    """The plain onnxruntime run on the padded ids (independent of export.runtime)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"tokens": ids})
    return {o.name: value for o, value in zip(session.get_outputs(), outputs)}


@pytest.fixture(scope="module", params=["hand-built", "builder"])
def trimmable(request, tmp_path_factory):
    """ONNX files of sentiment models whose rows may be cut after their last word.

    "hand-built" follows the builder's contract (test_export_support);
    "builder" is `build_sentiment_model`'s recipe, once its input is dynamic.
    """
    folder = tmp_path_factory.mktemp("trimmable")
    encoder = TextEncoder.fit(SENTENCES, num_words=30, seq_len=12)
    if request.param == "hand-built":
        model = trimmable_sentiment_model(encoder.vocab_size)
    else:
        _, model, _ = sentiment(folder, seq_len=12)
        if model.inputs[0].shape[1] is not None:
            pytest.skip("build_sentiment_model's recipe has a fixed sequence length")
    path = folder / "trimmable.onnx"
    convert(model, path, encoder=encoder)
    return path


def _mixed_ids(rng, n, width, vocab):
    """Rows of every length, all-padding rows, full rows and zeros between words."""
    ids = padded_ids(rng, n, width, vocab)
    ids[1::7] = 0  # all padding
    ids[2::9] = rng.integers(1, vocab, (len(ids[2::9]), width))  # full rows
    ids[3::11, 1] = 0  # padding between words
    return ids


def test_export_marks_them_padding_free(trimmable):
    assert read_metadata(trimmable)[METADATA_PADDING_FREE_KEY] == "true"


def test_a_model_whose_padding_matters_runs_padded(tmp_path):
    encoder = TextEncoder.fit(SENTENCES, num_words=30, seq_len=12)
    model = trimmable_sentiment_model(encoder.vocab_size, zero_padding=False)
    path = tmp_path / "sensitive.onnx"
    convert(model, path, encoder=encoder)
    assert METADATA_PADDING_FREE_KEY not in read_metadata(path)
    predictor = SentimentPredictor(path, chunk_size=16)
    ids = _mixed_ids(np.random.default_rng(5), 40, 12, predictor.vocab_size)
    # The uncut run is what this model means; cutting would change it.
    row = ids[2:3].copy()
    row[0, 4:] = 0
    cut = _reference(path, row[:, :4])
    assert not np.allclose(cut["probability"], _reference(path, row)["probability"], atol=1e-6)
    expected = _reference(path, ids)
    for name, value in predictor.run_ids(ids).items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_trimmed_runs_equal_the_padded_run(trimmable, threads):
    predictor = SentimentPredictor(trimmable, threads=threads, chunk_size=16)
    assert not predictor._fixed_length
    rng = np.random.default_rng(threads)
    for n in (1, 2, 5, 15, 16, 17, 64, 300):  # one call, a plan, several chunks and threads
        ids = _mixed_ids(rng, n, predictor.seq_len, predictor.vocab_size)
        got = predictor.run_ids(ids)
        expected = _reference(trimmable, ids)
        assert got["attention"].shape == (n, 12, 12)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=f"{name}, {n} rows")


def test_trimmed_single_rows_and_other_widths(trimmable):
    predictor = SentimentPredictor(trimmable)
    rows = [[0] * 12, [5] + [0] * 11, [5, 0, 0, 7] + [0] * 8, list(range(2, 14)), [3, 4], [3, 4, 5] + [0] * 30]
    for row in rows:
        for dtype in (np.int32, np.int64):
            ids = np.array([row], dtype)
            got = predictor.run_ids(ids)
            expected = _reference(trimmable, ids.astype(np.int32))
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=str(row))
    wide = _mixed_ids(np.random.default_rng(0), 40, 30, predictor.vocab_size)
    got, expected = predictor.run_ids(wide), _reference(trimmable, wide)
    assert got["attention"].shape == (40, 30, 30)
    np.testing.assert_allclose(got["attention"], expected["attention"], rtol=0, atol=1e-6)
    assert predictor.run_ids(wide[:0])["attention"].shape == (0, 30, 30)


def test_trimmed_predictions_match_the_padded_run(trimmable):
    predictor = SentimentPredictor(trimmable)
    texts = SENTENCES * 10 + ["", "!!", " ".join(["great"] * 30)]
    ids = predictor.encoder.encode(texts)
    expected = _reference(trimmable, ids)
    np.testing.assert_allclose(predictor.predict_proba(texts), expected["probability"][:, 0], rtol=0, atol=1e-6)
    for result, weights in zip(predictor.predict(texts), expected["attention"]):
        n = len(result.attention)
        if n:
            np.testing.assert_allclose([w for _, w in result.attention], weights[:n, :n].mean(axis=0), atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=400), max_rows=st.integers(1, 300))
def test_plan_covers_sorted_rows_in_chunks_of_their_longest_length(lengths, max_rows):
    lengths = np.sort(np.array(lengths, np.int32))
    chunks = _plan(lengths, max_rows)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    for (_, stop, _), (start, _, _) in zip(chunks, chunks[1:]):
        assert stop == start
    for start, stop, length in chunks:
        assert 0 < stop - start <= max_rows
        assert length == max(int(lengths[stop - 1]), 1)

"""export.runtime against Keras and plain onnxruntime: OnnxModel, batching, TextClassifier."""

import functools
import os
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import layers, ops

from export.runtime import (
    METADATA_PADDING_FREE_KEY,
    OnnxModel,
    Prediction,
    SentimentPredictor,
    TensorSpec,
    TextClassifier,
    _checked_runner,
    plan_chunks,
    read_metadata,
    sequence_lengths,
)
from export.text import TextEncoder
from export.to_onnx import convert, load_keras
from keras_attn import ScaledDotAttention
from keras_attn.saving import save_model
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


def _reference(path, feeds):
    """A plain onnxruntime run (independent of export.runtime), outputs by name."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    return {o.name: value for o, value in zip(session.get_outputs(), outputs)}


# -- a 3-class text model, trained on a toy corpus ----------------------------------

LABELS = ("negative", "neutral", "positive")
WORDS = {
    "negative": ["awful", "boring", "dull", "terrible", "bad", "slow"],
    "neutral": ["average", "okay", "fine", "plain", "usual", "mixed"],
    "positive": ["great", "wonderful", "superb", "lovely", "good", "fun"],
}
FILLER = ["the", "film", "was", "a", "plot", "and", "story", "quite"]
SEQ_LEN = 12


def _toy_corpus(rng, n):
    """Sentences of 1 to 16 words (some longer than SEQ_LEN), each with its class's words."""
    texts, labels = [], []
    for i in range(n):
        label = i % 3
        size = int(rng.integers(1, 17))
        words = [str(rng.choice(WORDS[LABELS[label]])) if rng.random() < 0.5 else str(rng.choice(FILLER))
                 for _ in range(size)]
        words[int(rng.integers(0, min(size, SEQ_LEN)))] = str(rng.choice(WORDS[LABELS[label]]))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


def three_class_model(vocab_size):
    """Embedding -> Conv1D -> ScaledDotAttention -> max pooling -> Dense(3, softmax), any length."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    padding = ops.not_equal(tokens, 0)
    real = ops.expand_dims(padding, axis=-1)
    x = layers.Embedding(vocab_size, 16)(tokens)
    x = x * ops.cast(real, x.dtype)  # padding embeds to 0: rows may be cut after their last word
    x = layers.Conv1D(16, 3, padding="same", activation="relu")(x)
    context, weights = ScaledDotAttention(name="self_attention")([x, x], mask=[padding, padding],
                                                                 return_attention_scores=True)
    weights = ops.where(real, weights, 0.0)
    pooled = ops.max(ops.where(real, context, -3.0e38), axis=1)
    pooled = ops.where(ops.any(real, axis=1), pooled, 0.0)
    probability = layers.Dense(3, activation="softmax", name="probability")(pooled)
    return keras.Model(tokens, {"probability": probability, "attention": weights}, name="three_class")


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("three_class")
    rng = np.random.default_rng(0)
    texts, labels = _toy_corpus(rng, 600)
    encoder = TextEncoder.fit(texts, num_words=40, seq_len=SEQ_LEN, labels=LABELS)
    model = three_class_model(encoder.vocab_size)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss={"probability": "sparse_categorical_crossentropy"})
    model.fit(encoder.encode(texts), {"probability": labels}, epochs=8, batch_size=32, verbose=0)
    save_model(model, folder / "three.keras", encoder)
    path = folder / "three.onnx"
    convert(load_keras(folder / "three.keras"), path)
    return model, encoder, path


@pytest.mark.slow
def test_three_class_model_matches_keras(three_class):
    model, encoder, path = three_class
    texts, truth = _toy_corpus(np.random.default_rng(1), 400)
    texts += ODD_TEXTS + ["zzz unknownword great", " ".join(["superb"] * 40)]
    classifier = TextClassifier(path)
    assert classifier.labels == LABELS and classifier.seq_len == SEQ_LEN
    assert read_metadata(path)[METADATA_PADDING_FREE_KEY] == "true"  # so rows run cut and bucketed
    expected = keras_outputs(model, [encoder.encode(texts)], None)
    proba = classifier.predict_proba(texts)
    assert proba.shape == (len(texts), 3)
    np.testing.assert_allclose(proba, expected["probability"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # predict_proba asks for the probabilities only: the same numbers as a run with attention.
    for batch in (texts[:1], texts[:64], texts):
        np.testing.assert_array_equal(classifier.predict_proba(batch), classifier.run_ids(encoder.encode(batch))["probability"])
    # It learned something: the parity is not on a constant output.
    assert np.mean(np.argmax(expected["probability"][: len(truth)], axis=1) == truth) > 0.8

    results = classifier.predict(texts)
    assert len(results) == len(texts)
    for text, result, p, weights in zip(texts, results, expected["probability"], expected["attention"]):
        assert isinstance(result, Prediction) and result.text == text
        assert result.label == LABELS[int(np.argmax(p))]
        assert result.probability == pytest.approx(float(np.max(p)), abs=1e-5)
        assert list(result.scores) == list(LABELS)
        np.testing.assert_allclose(list(result.scores.values()), p, atol=1e-5)
        # Words as cleaning finds them (lowercase a-z0-9 runs), counted independently.
        words = "".join(c if c.isascii() and c.isalnum() else " " for c in text.lower()).split()
        assert result.truncated == (len(words) > SEQ_LEN)
        n = min(len(words), SEQ_LEN)
        assert [w for w, _ in result.attention] == encoder.tokens(text)
        if n:
            np.testing.assert_allclose([w for _, w in result.attention], weights[:n, :n].mean(axis=0), atol=1e-5)
    assert results[-1].truncated and not results[-2].truncated
    assert "[UNK]" in [w for w, _ in results[-2].attention]


@pytest.mark.slow
def test_three_class_model_with_fixed_length_and_no_attention(three_class, tmp_path):
    """The same classifier read through a fixed-length graph without an attention output."""
    model, encoder, _ = three_class
    tokens = keras.Input((SEQ_LEN,), dtype="int32", name="tokens")
    fixed = keras.Model(tokens, {"probability": model(tokens)["probability"]})
    path = tmp_path / "fixed.onnx"
    convert(fixed, path, encoder=encoder)
    classifier = TextClassifier(path, threads=1)
    texts, _ = _toy_corpus(np.random.default_rng(2), 700)  # more than one call of MAX_CALL_WORK
    expected = keras_outputs(model, [encoder.encode(texts)], None)["probability"]
    np.testing.assert_allclose(classifier.predict_proba(texts), expected, rtol=0, atol=1e-5)
    result = classifier.predict(texts[0])[0]
    assert result.attention == () and result.label == LABELS[int(np.argmax(expected[0]))]


# -- the two-label case: SentimentPredictor --------------------------------------------


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


def test_sentiment_predictor_keeps_its_results(exported, predictor):
    model, path = exported
    texts = SENTENCES + ODD_TEXTS + ["zzz unknownword great"]
    expected = keras_outputs(model, [model.text_encoder.encode(texts)], None)["probability"][:, 0]
    got = predictor.predict_proba(texts)
    assert got.shape == (len(texts),)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    both = TextClassifier(path).predict_proba(texts)
    np.testing.assert_allclose(both, np.stack([1 - expected, expected], axis=1), atol=1e-5)
    for text, result, p in zip(texts, predictor.predict(texts), expected):
        label = "positive" if p >= 0.5 else "negative"
        assert result.label == label
        assert result.probability == pytest.approx(max(p, 1 - p), abs=1e-5)  # of its own label
        assert result.scores["positive"] == pytest.approx(p, abs=1e-5)
        assert result.scores["negative"] == pytest.approx(1 - p, abs=1e-5)
    assert predictor.labels == ("negative", "positive")


def test_run_ids_returns_model_outputs(exported, predictor):
    model, _ = exported
    ids = padded_ids(np.random.default_rng(1), 40, model.text_encoder.seq_len, model.text_encoder.vocab_size)
    out = predictor.run_ids(ids)
    expected = keras_outputs(model, [ids], None)
    assert set(out) == {"probability", "attention"}
    assert out["probability"].shape == (40, 1) and out["attention"].shape == (40, 8, 8)
    for name in out:
        np.testing.assert_allclose(out[name], expected[name], atol=1e-5)
    assert predictor.run_ids(ids[:0])["attention"].shape == (0, 8, 8)


def test_single_string_is_one_text(predictor):
    assert predictor.predict_proba("a great film").shape == (1,)
    (result,) = predictor.predict("a great film")
    assert result.text == "a great film"


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_gets_an_answer_aligned_with_its_words(predictor, text):
    (result,) = predictor.predict(text)
    assert [w for w, _ in result.attention] == predictor.encoder.tokens(text)
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-6)
    if result.attention:
        assert sum(w for _, w in result.attention) == pytest.approx(1.0, abs=1e-5)
        assert all(w >= 0 for _, w in result.attention)


def test_prediction_top_and_dict(predictor):
    (result,) = predictor.predict("the plot was great but the acting was terrible")
    top = result.top(2)
    assert top == sorted(result.attention, key=lambda item: -item[1])[:2]
    record = result.to_dict()
    assert set(record) == {"text", "label", "probability", "scores", "attention", "truncated"}
    assert predictor.predict("!!!")[0].attention == ()


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.zeros((2, 8), np.float32) + 0.5, "integers"),
        (np.zeros((2, 8), bool), "integers"),
        (np.array(["a"] * 8)[None], "integers"),
        (np.zeros(8, np.int32), "shape"),
        (np.zeros((), np.int32), "shape"),
        (np.zeros((2, 8, 1), np.int32), "shape"),
        (np.full((2, 8), 10_000, np.int64), "outside the vocabulary"),
        (np.full((2, 8), -1, np.int32), "outside the vocabulary"),
        ([[1, 2], [3]], "ids"),
    ],
)
def test_run_ids_validates_input(predictor, ids, message):
    with pytest.raises(ValueError, match=message):
        predictor.run_ids(ids)


def test_run_ids_accepts_other_integer_types(predictor):
    ids = [[2, 3, 4, 0, 0, 0, 0, 0]]
    a = predictor.run_ids(ids)["probability"]
    for dtype in (np.int64, np.uint8, np.uint64, np.int16):
        np.testing.assert_array_equal(predictor.run_ids(np.array(ids, dtype))["probability"], a)
    wide = np.array([[2, 9, 3, 9, 4, 9] + [0] * 10], np.int32)  # a non-contiguous view
    np.testing.assert_array_equal(predictor.run_ids(wide[:, ::2])["probability"], a)


def test_non_string_text_is_refused(predictor):
    with pytest.raises(TypeError):
        predictor.predict_proba([1, 2])


def test_threads_share_one_classifier(exported):
    classifier = TextClassifier(exported[1])
    texts = [f"{SENTENCES[i % len(SENTENCES)]} {'great ' * (i % 5)}" for i in range(64)]
    serial = {i: classifier.predict_proba(texts[i]) for i in range(len(texts))}
    many = texts * 20  # big enough for the multi-threaded session
    serial_many = classifier.predict_proba(many)
    failures = []

    def worker(k):
        try:
            for j in range(200):
                if j % 50 == 49:
                    if not np.array_equal(classifier.predict_proba(many), serial_many):
                        failures.append((k, j, "batch"))
                    continue
                i = (k * 31 + j) % len(texts)
                if not np.array_equal(classifier.predict_proba(texts[i]), serial[i]):
                    failures.append((k, j))
        except Exception as error:  # pragma: no cover - reported below
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_file_without_encoder_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    convert(attention_model("scale_none"), path)
    with pytest.raises(ValueError, match="no text encoder"):
        TextClassifier(path)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        TextClassifier(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="not a usable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")


@pytest.mark.slow
def test_runtime_never_imports_tensorflow_or_keras(exported, tmp_path):
    code = (
        "import sys\n"
        "import export.runtime\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from export.runtime import TextClassifier\n"
        f"p = TextClassifier({str(exported[1])!r})\n"
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


# -- any model: OnnxModel ---------------------------------------------------------


@pytest.fixture(scope="module")
def two_float_inputs(tmp_path_factory):
    """A non-text model: two float inputs, two outputs."""
    keras.utils.set_random_seed(0)
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    joined = layers.Concatenate()([a, b])
    model = keras.Model(
        [a, b],
        {"score": layers.Dense(2, activation="softmax", name="score")(joined),
         "embedding": layers.Dense(5, activation="tanh", name="embedding")(joined)},
        name="two_floats",
    )
    path = tmp_path_factory.mktemp("generic") / "generic.onnx"
    convert(model, path)
    return model, path


def test_onnx_model_describes_and_runs_any_model(two_float_inputs):
    model, path = two_float_inputs
    with OnnxModel(path) as onnx_model:
        assert onnx_model.inputs == (TensorSpec("a", "float32", (None, 4)), TensorSpec("b", "float32", (None, 3)))
        assert {o.name: o.shape for o in onnx_model.outputs} == {"score": (None, 2), "embedding": (None, 5)}
        assert onnx_model.metadata["model_name"] == "two_floats"
        rng = np.random.default_rng(0)
        for n in (1, 7, 600):  # 600 x 4 floats: above the work that goes to the threads
            a, b = rng.normal(size=(n, 4)), rng.normal(size=(n, 3))  # float64: cast to float32
            expected = keras_outputs(model, [a.astype(np.float32), b.astype(np.float32)], None)
            got = onnx_model.run({"a": a, "b": b.tolist()})
            assert set(got) == {"score", "embedding"}
            for name in expected:
                assert got[name].dtype == np.float32
                np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5)
        only = onnx_model.run({"a": a, "b": b}, outputs=["embedding"])
        assert list(only) == ["embedding"]
        np.testing.assert_array_equal(only["embedding"], got["embedding"])
        # Integers are exact in float32 at this size.
        ints = onnx_model.run({"a": np.arange(8).reshape(2, 4), "b": np.ones((2, 3), np.int32)})
        floats = onnx_model.run({"a": np.arange(8.0).reshape(2, 4), "b": np.ones((2, 3))})
        np.testing.assert_array_equal(ints["score"], floats["score"])
    with pytest.raises(ValueError, match="closed"):
        onnx_model.run({"a": a, "b": b})


@pytest.mark.parametrize(
    "feeds, message",
    [
        ({"a": np.zeros((2, 4))}, "missing input 'b'"),
        ({"a": np.zeros((2, 4)), "b": np.zeros((2, 3)), "c": 1}, "unknown input 'c'"),
        ({"a": np.zeros((2, 4)), "b": np.zeros(3)}, "input 'b': expected rank 2"),
        ({"a": np.zeros((2, 5)), "b": np.zeros((2, 3))}, "input 'a': axis 1 must be 4"),
        ({"a": np.full((2, 4), "x"), "b": np.zeros((2, 3))}, "input 'a': cannot cast <U1 to float32"),
        ({"a": np.zeros((2, 4), bool), "b": np.zeros((2, 3))}, "input 'a': cannot cast bool"),
        ({"a": [[1, 2], [3]], "b": np.zeros((2, 3))}, "input 'a'"),
        ([np.zeros((2, 4)), np.zeros((2, 3))], "dict"),
    ],
)
def test_onnx_model_checks_feeds(two_float_inputs, feeds, message):
    onnx_model = OnnxModel(two_float_inputs[1])
    with pytest.raises(ValueError, match=message) as error:
        onnx_model.run(feeds)
    assert "\n" not in str(error.value)


def test_onnx_model_casts_integers_only_when_they_fit(exported):
    onnx_model = OnnxModel(exported[1], threads=1)
    assert onnx_model.inputs[0].dtype == "int32"
    ids = np.array([[2, 3, 4, 0]], np.int64)
    expected = _reference(exported[1], {"tokens": ids.astype(np.int32)})
    got = onnx_model.run({"tokens": ids})
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    with pytest.raises(ValueError, match="value 4294967296 does not fit int32"):
        onnx_model.run({"tokens": ids * 0 + 2**32})
    with pytest.raises(ValueError, match="cannot cast float64 to int32"):
        onnx_model.run({"tokens": ids.astype(float)})
    with pytest.raises(ValueError, match="unknown output 'nope'"):
        onnx_model.run({"tokens": ids}, outputs=["nope"])


def test_calls_side_by_side_run_each_item_once_and_stop_at_the_first_error(exported):
    model = OnnxModel(exported[1], threads=2)
    seen, lock = [], threading.Lock()

    def record(item):
        time.sleep(0.001)
        with lock:
            seen.append((item, threading.get_ident()))

    model._run_many(record, list(range(50)))
    assert sorted(item for item, _ in seen) == list(range(50))
    threads_used = {ident for _, ident in seen}
    assert threading.get_ident() in threads_used  # the calling thread takes its share
    assert len(threads_used) == model.threads
    started = []

    def fail_on_three(item):
        started.append(item)
        if item == 3:
            raise RuntimeError("call 3 failed")
        time.sleep(0.01)

    with pytest.raises(RuntimeError, match="call 3 failed"):
        model._run_many(fail_on_three, list(range(40)))
    assert len(started) < 10  # no call starts once one failed
    model.close()


def test_a_session_without_the_private_binding_runs_through_its_public_run():
    class Session:  # what a future onnxruntime without `_sess` would be
        def run(self, names, feeds, run_options=None):
            return [names, feeds, run_options]

    assert _checked_runner(Session())(["y"], {"x": 1}, None) == [["y"], {"x": 1}, None]


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(exported, threads):
    with pytest.raises(ValueError, match="threads"):
        OnnxModel(exported[1], threads=threads)


def test_threads_are_capped_by_the_usable_cores(exported):
    cores = len(os.sched_getaffinity(0))
    assert OnnxModel(exported[1]).threads == cores
    assert OnnxModel(exported[1], threads=1).threads == 1
    assert OnnxModel(exported[1], threads=1000).threads == cores


# -- batching and length-bucketing ---------------------------------------------------


@pytest.fixture(scope="module", params=["hand-built", "builder"])
def trimmable(request, tmp_path_factory):
    """ONNX files of sentiment models whose rows may be cut after their last word."""
    folder = tmp_path_factory.mktemp("trimmable")
    encoder = TextEncoder.fit(SENTENCES, num_words=30, seq_len=12)
    if request.param == "hand-built":
        model = trimmable_sentiment_model(encoder.vocab_size)
    else:
        _, model, _ = sentiment(folder, seq_len=12)
    path = folder / "trimmable.onnx"
    convert(model, path, encoder=encoder)
    assert read_metadata(path)[METADATA_PADDING_FREE_KEY] == "true"
    return path


def _mixed_ids(rng, n, width, vocab):
    """Rows of every length, all-padding rows, full rows and zeros between words."""
    ids = padded_ids(rng, n, width, vocab)
    ids[1::7] = 0  # all padding
    ids[2::9] = rng.integers(1, vocab, (len(ids[2::9]), width))  # full rows
    ids[3::11, 1] = 0  # padding between words
    return ids


def test_sequence_lengths_end_at_the_last_word():
    ids = np.array([[0, 0, 0, 0], [5, 0, 0, 0], [5, 0, 7, 0], [1, 2, 3, 4], [0, 0, 0, 9]])
    np.testing.assert_array_equal(sequence_lengths(ids), [0, 1, 3, 4, 4])


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), max_size=400), max_work=st.integers(1, 5000),
       min_work=st.integers(0, 3000))
def test_plan_covers_every_row_once_with_room_for_it(lengths, max_work, min_work):
    chunks = plan_chunks(lengths, max_work=max_work, min_work=min_work)
    rows = np.concatenate([r for r, _ in chunks]) if chunks else np.array([], int)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for r, length in chunks:
        assert len(r) > 0 and length >= max(1, max(lengths[i] for i in r))
        # Sorted calls hold at most max_work; a batch of at most min_work is one call.
        assert len(r) == 1 or len(r) * length <= max(max_work, min_work)


@functools.lru_cache
def _opened(path):
    """One OnnxModel and the vocabulary size per file, shared by the examples of a Hypothesis test."""
    return OnnxModel(path), TextClassifier(path).vocab_size


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_batching_plan_gives_the_outputs_of_one_padded_call(trimmable, data):
    """Rows run in any groups, each cut anywhere after its longest row, as in one padded call."""
    onnx_model, vocab = _opened(trimmable)
    n = data.draw(st.integers(1, 60))
    ids = _mixed_ids(np.random.default_rng(data.draw(st.integers(0, 2**16))), n, 12, vocab)
    expected = _reference(trimmable, {"tokens": ids})
    order = data.draw(st.permutations(range(n)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=6)) if n > 1 else []))
    lengths = sequence_lengths(ids)
    probability = np.full((n, 1), np.nan, np.float32)
    attention = np.zeros((n, 12, 12), np.float32)
    for group in np.split(np.array(order), cuts):
        length = data.draw(st.integers(max(1, int(lengths[group].max())), 12))
        out = onnx_model.run({"tokens": ids[group, :length]})
        probability[group] = out["probability"]
        attention[group, :length, :length] = out["attention"]
    np.testing.assert_allclose(probability, expected["probability"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(attention, expected["attention"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("threads", [1, None])
def test_text_classifier_runs_equal_the_padded_run(trimmable, threads):
    classifier = TextClassifier(trimmable, threads=threads)
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 64, 300, 2000):  # one call, a plan, many chunks, threads
        ids = _mixed_ids(rng, n, classifier.seq_len, classifier.vocab_size)
        got = classifier.run_ids(ids)
        expected = _reference(trimmable, {"tokens": ids})
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=f"{name}, {n} rows")
    wide = _mixed_ids(rng, 40, 30, classifier.vocab_size)  # a dynamic axis takes other widths
    np.testing.assert_allclose(classifier.run_ids(wide)["attention"], _reference(trimmable, {"tokens": wide})["attention"],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("threads", [1, None])
def test_a_small_batch_of_cut_rows_is_one_call(trimmable, threads):
    """Each onnxruntime call costs tens of microseconds: a few short rows must not become several."""
    classifier = TextClassifier(trimmable, threads=threads)
    calls = []
    run_one = classifier.model._run_one
    classifier.model._run_one = lambda *args: calls.append(args[1]["tokens"].shape) or run_one(*args)
    ids = _mixed_ids(np.random.default_rng(3), 8, classifier.seq_len, classifier.vocab_size)
    expected = _reference(trimmable, {"tokens": ids})
    np.testing.assert_allclose(classifier.run_ids(ids)["probability"], expected["probability"], rtol=0, atol=1e-6)
    assert calls == [(8, int(sequence_lengths(ids).max()))]


def test_a_model_whose_padding_matters_runs_padded(tmp_path):
    encoder = TextEncoder.fit(SENTENCES, num_words=30, seq_len=12)
    model = trimmable_sentiment_model(encoder.vocab_size, zero_padding=False)
    path = tmp_path / "sensitive.onnx"
    convert(model, path, encoder=encoder)
    assert METADATA_PADDING_FREE_KEY not in read_metadata(path)
    ids = _mixed_ids(np.random.default_rng(5), 600, 12, encoder.vocab_size)
    row = ids[2:3].copy()
    row[0, 4:] = 0
    # Cutting would change this model's numbers: it must run as given.
    assert not np.allclose(_reference(path, {"tokens": row[:, :4]})["probability"],
                           _reference(path, {"tokens": row})["probability"], atol=1e-6)
    expected = _reference(path, {"tokens": ids})
    for name, value in TextClassifier(path).run_ids(ids).items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6)


def test_fixed_length_model_runs_whole_rows(tmp_path):
    """The tutorial's pooling (Flatten): a fixed sequence length, never cut."""
    keras_path, _, _ = sentiment(tmp_path, pooling="flatten")
    convert(load_keras(keras_path), tmp_path / "fixed.onnx")
    classifier = TextClassifier(tmp_path / "fixed.onnx")
    ids = padded_ids(np.random.default_rng(5), 700, 8, classifier.vocab_size)
    expected = _reference(tmp_path / "fixed.onnx", {"tokens": ids})
    for rows in (ids, ids[:1], ids[:20], ids[:200]):  # side by side, one row, one thread, intra-op threads
        got = classifier.run_ids(rows)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name][: len(rows)], rtol=0, atol=1e-6)
    for width in (7, 9):
        with pytest.raises(ValueError, match="shape"):
            classifier.run_ids(np.zeros((2, width), np.int32))


def test_a_probability_that_does_not_match_the_labels_is_refused(tmp_path):
    encoder = TextEncoder.fit(SENTENCES, num_words=30, seq_len=8)  # 2 labels, but 3 softmax units
    convert(three_class_model(encoder.vocab_size), tmp_path / "mismatch.onnx", encoder=encoder)
    with pytest.raises(ValueError, match=r"'probability' must be .* found shape \(None, 3\) and 2 labels"):
        TextClassifier(tmp_path / "mismatch.onnx")


def test_a_closed_classifier_refuses_to_run(exported):
    with TextClassifier(exported[1]) as classifier:
        classifier.predict_proba(SENTENCES * 100)  # starts its pool
    with pytest.raises(ValueError, match="closed"):
        classifier.predict_proba("a great film")

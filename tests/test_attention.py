"""ScaledDotAttention against a float64 numpy reference and Keras's layer."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_attn import ScaledDotAttention


def reference(q, v, k=None, q_mask=None, v_mask=None, causal=False,
              scale=None):
    """softmax(scale * q k^T) v in float64; fully masked rows give zeros."""
    q, v = q.astype(np.float64), v.astype(np.float64)
    k = v if k is None else k.astype(np.float64)
    scale = 1 / np.sqrt(k.shape[-1]) if scale is None else scale
    scores = scale * q @ np.swapaxes(k, -1, -2)
    allowed = np.ones(scores.shape, bool)
    if v_mask is not None:
        allowed &= v_mask[:, None, :]
    if causal:
        allowed &= np.tril(np.ones(scores.shape[-2:], bool))
    top = np.where(allowed, scores, -np.inf).max(-1, keepdims=True)
    exp = np.where(allowed, np.exp(scores - np.where(allowed.any(-1, keepdims=True), top, 0)), 0)
    total = exp.sum(-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    out = weights @ v
    if q_mask is not None:
        out = out * q_mask[..., None]
    return out, weights


@st.composite
def attention_case(draw):
    batch = draw(st.integers(1, 3))
    tq, tv, dim = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(
        st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    case = {
        "q": rng.normal(size=(batch, tq, dim)).astype(np.float32),
        "v": rng.normal(size=(batch, tv, dim)).astype(np.float32),
        "k": None,
        "q_mask": None,
        "v_mask": None,
        "causal": draw(st.booleans()),
        "scale": draw(st.sampled_from([None, 1.0, 0.3])),
    }
    if draw(st.booleans()):
        case["k"] = rng.normal(size=(batch, tv, dim)).astype(np.float32)
    if draw(st.booleans()):
        # Low keep rates make fully masked rows common.
        case["v_mask"] = rng.random((batch, tv)) < draw(st.sampled_from([0.3, 0.8]))
        case["q_mask"] = rng.random((batch, tq)) < 0.7
    return case


def run_layer(layer, case, **kwargs):
    inputs = [case["q"], case["v"]] + ([case["k"]] if case["k"] is not None else [])
    mask = None
    if case["v_mask"] is not None:
        mask = [case["q_mask"], case["v_mask"]]
    out, weights = layer(inputs, mask=mask, return_attention_scores=True,
                         use_causal_mask=case["causal"], **kwargs)
    return keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(weights)


@settings(max_examples=60, deadline=None)
@given(attention_case())
def test_matches_float64_reference(case):
    out, weights = run_layer(ScaledDotAttention(scale=case["scale"]), case)
    want_out, want_weights = reference(**case)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    np.testing.assert_allclose(weights, want_weights, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(attention_case())
def test_weights_sum_to_one_over_allowed_keys_and_zero_elsewhere(case):
    _, weights = run_layer(ScaledDotAttention(), case)
    _, want = reference(**case)
    allowed = want > 0
    rows_with_keys = allowed.any(-1)
    np.testing.assert_allclose(weights.sum(-1)[rows_with_keys], 1, atol=1e-5)
    assert np.all(weights[~allowed] == 0)
    assert np.all(weights[~rows_with_keys] == 0)


def test_default_scale_is_inverse_sqrt_of_key_dim():
    q = np.ones((1, 1, 4), np.float32)
    v = np.array([[[1, 1, 1, 1], [0, 0, 0, 0]]], np.float32)
    _, weights = ScaledDotAttention()([q, v], return_attention_scores=True)
    # scores 4 / sqrt(4) = 2 and 0: softmax gives e^2 / (e^2 + 1).
    np.testing.assert_allclose(weights[0, 0, 0], np.e**2 / (np.e**2 + 1),
                               rtol=1e-6)


def test_fully_masked_row_gives_zero_weights_and_output():
    q = np.ones((1, 2, 3), np.float32)
    v = np.ones((1, 2, 3), np.float32)
    out, weights = ScaledDotAttention()(
        [q, v], mask=[None, np.array([[False, False]])],
        return_attention_scores=True)
    assert np.all(np.asarray(out) == 0) and np.all(np.asarray(weights) == 0)


@pytest.mark.parametrize("score_mode", ["dot", "concat"])
@pytest.mark.parametrize("use_scale", [False, True])
def test_equals_keras_attention_at_scale_one(score_mode, use_scale):
    rng = np.random.default_rng(0)
    q, v, k = (rng.normal(size=(4, 5, 6)).astype(np.float32) for _ in range(3))
    v_mask = rng.random((4, 5)) < 0.7
    v_mask[:, 0] = True  # Keras differs on fully masked rows, by design.
    q_mask = rng.random((4, 5)) < 0.7
    theirs = keras.layers.Attention(use_scale=use_scale, score_mode=score_mode)
    ours = ScaledDotAttention(use_scale=use_scale, score_mode=score_mode,
                              scale=1.0)
    theirs([q, v, k])
    ours([q, v, k])
    # Learned weights other than their initial 1.0, loaded across layers by
    # name and order, as a drop-in must allow.
    theirs.set_weights([np.float32(0.5 + i) for i in range(len(theirs.weights))])
    ours.set_weights(theirs.get_weights())
    for kwargs in ({}, {"use_causal_mask": True}):
        want = theirs([q, v, k], mask=[q_mask, v_mask],
                      return_attention_scores=True, **kwargs)
        got = ours([q, v, k], mask=[q_mask, v_mask],
                   return_attention_scores=True, **kwargs)
        for g, w in zip(got, want):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(g),
                                       keras.ops.convert_to_numpy(w), atol=1e-6)


def test_dropout_acts_in_training_only():
    rng = np.random.default_rng(1)
    q, v = (rng.normal(size=(2, 8, 4)).astype(np.float32) for _ in range(2))
    layer = ScaledDotAttention(dropout=0.5, seed=3)
    _, inference = layer([q, v], return_attention_scores=True)
    _, training = layer([q, v], return_attention_scores=True, training=True)
    _, want = reference(q, v)
    np.testing.assert_allclose(inference, want, atol=1e-6)
    training = np.asarray(training)
    dropped = training == 0
    assert 0.2 < dropped.mean() < 0.8
    # Kept weights are rescaled by 1 / (1 - rate).
    np.testing.assert_allclose(training[~dropped], 2 * want[~dropped],
                               rtol=1e-5)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_mixed_precision_stays_finite(mixed_float16):
    # Matching keys score 300 * 300 = 90000, beyond float16's 65504.
    q = (300 * np.eye(4, 4, dtype=np.float16))[None].repeat(2, axis=0)
    v = np.random.default_rng(2).normal(size=(2, 4, 4)).astype(np.float16)
    v_mask = np.array([[True, True, False, False], [False] * 4])
    layer = ScaledDotAttention(scale=1.0)
    out, weights = layer([q, v, q], mask=[None, v_mask],
                         return_attention_scores=True)
    assert layer.compute_dtype == "float16"
    out, weights = np.asarray(out, np.float64), np.asarray(weights, np.float64)
    assert np.isfinite(out).all() and np.isfinite(weights).all()
    want_out, want_weights = reference(q, v, q, v_mask=v_mask, scale=1.0)
    np.testing.assert_allclose(weights, want_weights, atol=1e-3)
    np.testing.assert_allclose(out, want_out, atol=1e-2)


def test_symbolic_call_gives_weights_as_second_model_output():
    inputs = keras.Input((7, 5))
    out, weights = ScaledDotAttention()([inputs, inputs],
                                        return_attention_scores=True)
    assert (out.shape, weights.shape) == ((None, 7, 5), (None, 7, 7))
    model = keras.Model(inputs, {"output": out, "weights": weights})
    x = np.random.default_rng(4).normal(size=(3, 7, 5)).astype(np.float32)
    got = model.predict(x, verbose=0)
    want_out, want_weights = reference(x, x)
    np.testing.assert_allclose(got["output"], want_out, atol=1e-5)
    np.testing.assert_allclose(got["weights"], want_weights, atol=1e-6)


def test_config_holds_every_constructor_argument():
    layer = ScaledDotAttention(use_scale=True, score_mode="concat",
                               dropout=0.25, seed=7, scale=0.5)
    config = layer.get_config()
    assert {k: config[k] for k in
            ("use_scale", "score_mode", "dropout", "seed", "scale")} == {
        "use_scale": True, "score_mode": "concat", "dropout": 0.25,
        "seed": 7, "scale": 0.5}
    assert ScaledDotAttention.from_config(config).get_config() == config


def test_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        ScaledDotAttention(scale="large")


LOAD_SCRIPT = """
import sys, json
import numpy as np
import keras
import keras_attn
model = keras.models.load_model(sys.argv[1])
x = np.load(sys.argv[2])
out = model.predict(x, verbose=0)
print(json.dumps({k: np.asarray(v).tolist() for k, v in out.items()}))
"""


@pytest.mark.slow
def test_keras_file_loads_in_new_process_without_custom_objects(tmp_path):
    inputs = keras.Input((6, 4))
    out, weights = ScaledDotAttention(use_scale=True, score_mode="concat",
                                      scale=0.5, dropout=0.1)(
        [inputs, inputs], return_attention_scores=True)
    model = keras.Model(inputs, {"output": out, "weights": weights})
    model.layers[-1].set_weights([np.float32(1.5), np.float32(0.75)])
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(3).normal(size=(2, 6, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(path), str(tmp_path / "x.npy")],
        capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    want = model.predict(x, verbose=0)
    for name in ("output", "weights"):
        np.testing.assert_allclose(loaded[name], want[name], atol=1e-6)

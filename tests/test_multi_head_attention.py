"""MultiHeadScaledDotAttention against a float64 numpy reference and Keras's layer.

The reference is computed from the layer's own weights. Both paths of the
layer are checked, in the style of HF transformers' eager-vs-SDPA test:
the plain path (weights asked for) and the fused one
(`keras.ops.dot_product_attention`), forced on any backend by adding it to
`FUSED_BACKENDS`. The module runs on the current Keras backend;
`test_other_backends` runs it again under JAX and torch.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_attn.attention
from keras_attn import MultiHeadScaledDotAttention

BACKEND = keras.backend.backend()


def reference(layer, q, v, k=None, allowed=None):
    """Output and per-head weights in float64; fully masked rows attend to nothing."""
    k = v if k is None else k
    w = {x.path.split("/")[-2] + "/" + x.path.split("/")[-1]: np.asarray(keras.ops.convert_to_numpy(x), np.float64)
         for x in layer.weights}
    project = lambda x, name: np.einsum("btd,dnh->btnh", x, w[f"{name}/kernel"]) + w[f"{name}/bias"]
    qp, kp, vp = project(q, "query"), project(k, "key"), project(v, "value")
    scores = np.einsum("btnh,bsnh->bnts", qp, kp) / np.sqrt(qp.shape[-1])
    allowed = np.ones(scores.shape, bool) if allowed is None else np.broadcast_to(allowed[:, None], scores.shape)
    exp = np.where(allowed, np.exp(scores - np.where(allowed, scores, -np.inf).max(-1, keepdims=True, initial=-1e300)), 0)
    total = exp.sum(-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    heads = np.einsum("bnts,bsnh->btnh", weights, vp)
    out = np.einsum("btnh,nhe->bte", heads, w["attention_output/kernel"]) + w["attention_output/bias"]
    return out, weights


def case(seed, batch=3, tq=5, tv=6, dim=8, keep=0.6):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, tq, dim)).astype(np.float32)
    v = rng.normal(size=(batch, tv, dim)).astype(np.float32)
    k = rng.normal(size=(batch, tv, dim)).astype(np.float32)
    mask = rng.random((batch, tq, tv)) < keep
    mask[0, 1] = False  # a fully masked row, always
    return q, v, k, mask


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def layer_for(q, v, k, **options):
    layer = MultiHeadScaledDotAttention(num_heads=2, key_dim=4, **options)
    layer(q, v, k, return_attention_scores=True)
    rng = np.random.default_rng(7)
    # Nonzero biases, so a zero attention output shows as the output bias.
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


@pytest.fixture
def fused_everywhere(monkeypatch):
    monkeypatch.setattr(keras_attn.attention, "FUSED_BACKENDS", (BACKEND,))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("causal", [False, True])
def test_plain_path_matches_float64_reference(seed, causal):
    q, v, k, mask = case(seed)
    layer = layer_for(q, v, k)
    out, weights = layer(q, v, k, attention_mask=mask, use_causal_mask=causal, return_attention_scores=True)
    allowed = mask & np.tril(np.ones(mask.shape[1:], bool)) if causal else mask
    want_out, want_weights = reference(layer, q, v, k, allowed)
    np.testing.assert_allclose(numpy(weights), want_weights, atol=1e-6)
    np.testing.assert_allclose(numpy(out), want_out, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("value_dim", [None, 3])
def test_fused_and_plain_paths_agree(fused_everywhere, seed, causal, padding, value_dim):
    q, v, k, mask = case(seed)
    layer = layer_for(q, v, k, value_dim=value_dim)
    kwargs = {"use_causal_mask": causal, "attention_mask": mask if padding else None}
    plain, _ = layer(q, v, k, return_attention_scores=True, **kwargs)
    fused = layer(q, v, k, **kwargs)
    np.testing.assert_allclose(numpy(fused), numpy(plain), rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_give_zero_weights_and_the_output_bias_on_both_paths(fused_everywhere):
    q, v, k, mask = case(0)
    mask[1] = False  # a whole example with no key at all
    layer = layer_for(q, v, k, dropout=0.5)
    out, weights = layer(q, v, k, attention_mask=mask, return_attention_scores=True)
    fused = layer(q, v, k, attention_mask=mask)  # inference: dropout > 0 keeps the fused path
    bias = numpy(layer.output_dense.bias)
    rows = ~mask.any(-1)
    assert rows.sum() >= 6
    assert np.all(numpy(weights)[rows[:, None].repeat(2, 1)] == 0)
    for got in (out, fused):
        got = numpy(got)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got[rows], np.broadcast_to(bias, got[rows].shape), atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_weights_move_to_and_from_keras_and_the_outputs_agree(causal):
    q, v, k, mask = case(2)
    ours = layer_for(q, v, k)
    theirs = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    theirs(q, v, k, return_attention_scores=True)
    theirs.set_weights(ours.get_weights())
    assert [w.path.split("/", 1)[1] for w in theirs.weights] == [w.path.split("/", 1)[1] for w in ours.weights]
    # Keras's plain path also gives fully masked rows zero weights.
    want = theirs(q, v, k, attention_mask=mask, use_causal_mask=causal, return_attention_scores=True)
    got = ours(q, v, k, attention_mask=mask, use_causal_mask=causal, return_attention_scores=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(numpy(g), numpy(w), atol=1e-5)
    # Keras's fused path agrees with it wherever a query has a key.
    rows = mask.any(-1)
    np.testing.assert_allclose(numpy(ours(q, v, k, attention_mask=mask))[rows],
                               numpy(theirs(q, v, k, attention_mask=mask))[rows], atol=1e-5)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_mixed_precision_stays_finite_on_both_paths(mixed_float16, fused_everywhere):
    q, v, k, mask = case(3)
    layer = MultiHeadScaledDotAttention(num_heads=2, key_dim=4, kernel_initializer="ones")
    # Every projected feature of the query and key is 8 * 200 = 1600: scores
    # of 1600^2 * 4 / 2 = 5e6, far beyond float16's 65504.
    big_q, big_k = np.full(q.shape, 200, np.float16), np.full(k.shape, 200, np.float16)
    out, weights = layer(big_q, v, big_k, attention_mask=mask, return_attention_scores=True)
    fused = layer(big_q, v, big_k, attention_mask=mask)
    assert layer.compute_dtype == "float16"
    rows = ~mask.any(-1)
    for got in (out, weights, fused):
        assert np.isfinite(numpy(got)).all()
    assert np.all(numpy(weights)[rows[:, None].repeat(2, 1)] == 0)
    np.testing.assert_allclose(numpy(fused), numpy(out), atol=2e-2)
    np.testing.assert_allclose(numpy(out)[rows], 0, atol=1e-3)  # biases start at zero


def test_dropout_acts_in_training_only():
    q, v, k, _ = case(4, tq=16, tv=16)
    layer = layer_for(q, v, k, dropout=0.5, seed=3)
    _, inference = layer(q, v, k, return_attention_scores=True)
    _, training = layer(q, v, k, return_attention_scores=True, training=True)
    np.testing.assert_allclose(numpy(inference), reference(layer, q, v, k)[1], atol=1e-6)
    # The weights returned are the softmax's; dropout acts on the output.
    np.testing.assert_allclose(numpy(training), numpy(inference), atol=1e-6)
    trained = numpy(layer(q, v, k, training=True))
    assert not np.allclose(trained, numpy(layer(q, v, k)), atol=1e-3)


def test_config_holds_every_constructor_argument():
    layer = MultiHeadScaledDotAttention(
        num_heads=3, key_dim=4, value_dim=5, dropout=0.25, use_bias=False, output_shape=(7,),
        attention_axes=(1,), sliding_window=3, flash_attention=False, use_gate=True, seed=9,
        kernel_initializer="he_normal", bias_initializer="ones", kernel_regularizer="l2",
    )
    config = layer.get_config()
    import inspect

    keras_arguments = set(inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters) - {"self", "kwargs"}
    assert keras_arguments <= set(config)
    assert config["flash_attention"] is False and config["sliding_window"] == 3 and config["use_gate"] is True
    assert MultiHeadScaledDotAttention.from_config(config).get_config() == config


def test_saved_model_loads_without_custom_objects(tmp_path):
    inputs = keras.Input((5, 8))
    out, weights = MultiHeadScaledDotAttention(num_heads=2, key_dim=4)(inputs, inputs, return_attention_scores=True)
    model = keras.Model(inputs, {"output": out, "weights": weights})
    model.save(tmp_path / "m.keras")
    x = case(5)[0]
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.layers[-1]) is MultiHeadScaledDotAttention
    for name, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(x, verbose=0)[name], value, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs the other backends from the default one")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-m", "not slow"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:]

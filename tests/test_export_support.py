"""Small models shared by the export, runtime and CLI tests (this module has no tests).

Every model is built from standard layers and `ScaledDotAttention` with
random weights large enough that the softmax is far from uniform.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from export.text import TextEncoder
from keras_attn import ScaledDotAttention
from keras_attn.models import build_sentiment_model
from keras_attn.saving import save_model

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 23
SEQ_LEN = 8

SENTENCES = [
    "a great film, great fun",
    "the acting was awful and the plot dull",
    "i loved the story",
    "boring and slow",
    "not bad, not great",
    "what a wonderful cast",
    "the worst film of the year",
    "fun fun fun",
]


def _embedding(vocab=VOCAB, dim=8, name="embedding"):
    return layers.Embedding(
        vocab, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1), name=name
    )


def _dense(dim, name):
    return layers.Dense(dim, kernel_initializer=keras.initializers.GlorotNormal(seed=sum(map(ord, name))), name=name)


def attention_model(config):
    """One token input -> Embedding -> ScaledDotAttention(config) -> dict outputs."""
    keras.utils.set_random_seed(0)
    seq_len = None if config == "variable_length" else SEQ_LEN
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    padding = ops.not_equal(tokens, 0)
    x = _embedding()(tokens)
    query, value, key = _dense(8, "query")(x), _dense(8, "value")(x), _dense(8, "key")(x)
    options = {
        "scale_none": {},
        "variable_length": {},
        "scale_float": {"scale": 0.37},
        "use_scale": {"use_scale": True},
        "concat": {"score_mode": "concat", "use_scale": True, "scale": 0.8},
        "causal": {},
        "three_inputs": {},
        "dropout": {"dropout": 0.5, "seed": 3},
    }[config]
    layer = ScaledDotAttention(name="attention", **options)
    inputs = [query, value, key] if config == "three_inputs" else [query, value]
    context, weights = layer(
        inputs,
        mask=[padding, padding],
        return_attention_scores=True,
        use_causal_mask=config == "causal",
    )
    pooled = layers.GlobalAveragePooling1D(name="mean")(context, mask=padding)
    probability = layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    model = keras.Model(tokens, {"probability": probability, "attention": weights}, name=config)
    if layer.learned_scale is not None:
        layer.learned_scale.assign(1.7)
    if layer.concat_score_weight is not None:
        layer.concat_score_weight.assign(-0.6)
    return model


def two_input_model():
    """Queries and values from two token inputs of different lengths; list outputs."""
    keras.utils.set_random_seed(0)
    queries = keras.Input((5,), dtype="int32", name="queries")
    values = keras.Input((9,), dtype="int32", name="values")
    embed = _embedding()
    q, v = embed(queries), embed(values)
    context, weights = ScaledDotAttention(name="cross")(
        [q, v], mask=[ops.not_equal(queries, 0), ops.not_equal(values, 0)], return_attention_scores=True
    )
    score = layers.Dense(3, activation="softmax", name="classes")(layers.Flatten()(context))
    return keras.Model([queries, values], [score, weights], name="two_inputs")


CONFIGS = ["scale_none", "scale_float", "use_scale", "concat", "causal", "three_inputs", "dropout", "variable_length"]


def sentiment(directory, *, seq_len=SEQ_LEN, name="sentiment.keras", **hp):
    """A small untrained sentiment model saved with its encoder; returns (path, model, encoder)."""
    keras.utils.set_random_seed(0)
    encoder = TextEncoder.fit(SENTENCES, num_words=30, seq_len=seq_len)
    hp = {"embedding_dim": 8, "units": 12, "kernel_size": 3, **hp}
    model = build_sentiment_model(encoder.vocab_size, seq_len, **hp)
    # Larger embeddings than the default init, so attention is not uniform.
    embedding = model.get_layer("embedding")
    embedding.embeddings.assign(np.random.default_rng(0).normal(0, 1.5, embedding.embeddings.shape))
    path = Path(directory) / name
    save_model(model, path, encoder)
    return path, model, encoder


def keras_outputs(model, ids, names):
    """Keras's outputs, by name, for a list of input arrays (independent of export code)."""
    result = model([ops.convert_to_tensor(x) for x in ids] if len(ids) > 1 else ops.convert_to_tensor(ids[0]),
                   training=False)
    if isinstance(result, dict):
        return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in result.items()}
    return {n: np.asarray(ops.convert_to_numpy(v)) for n, v in zip(names, result)}


def padded_ids(rng, n, length, vocab=VOCAB):
    """Random ids with padding at the end; row 0 all padding."""
    ids = rng.integers(1, vocab, (n, length))
    lengths = rng.integers(0, length + 1, n)
    lengths[0] = 0
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int32)


def run_module(module, *args, cwd, stdin=None, timeout=300, env=None):
    """``python -m module args`` with the repository importable; returns CompletedProcess.

    ``env`` adds to (or overrides) this process's environment.
    """
    return _run_python(["-m", module, *map(str, args)], cwd=cwd, stdin=stdin, timeout=timeout, env=env)


def run_script(path, *args, cwd, timeout=300, env=None):
    """``python path args`` with the repository importable; returns CompletedProcess."""
    return _run_python([str(path), *map(str, args)], cwd=cwd, stdin=None, timeout=timeout, env=env)


def _run_python(argv, *, cwd, stdin, timeout, env):
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def trimmable_sentiment_model(vocab_size, *, embedding_dim=8, units=12, kernel_size=3, seed=0, zero_padding=True):
    """A recipe-style sentiment model whose rows can be cut at their last real token.

    Hand-built to the contract `export.runtime` relies on for a dynamic
    sequence axis: (a) ``Input((None,))``; (b) padding embeds to exactly 0,
    so Conv1D's "same" zero padding past a cut row equals the padding of an
    uncut one; (c) attention rows of padded queries are 0 (padded keys
    already are). Residual add, max pooling over the real tokens.
    ``zero_padding=False`` drops (b): the last words' convolution then reads
    the padding's embedding, and cutting a row changes its numbers.
    """
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    padding = ops.not_equal(tokens, 0)
    real = ops.expand_dims(padding, axis=-1)
    x = layers.Embedding(
        vocab_size, embedding_dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.5, seed=seed + 1)
    )(tokens)
    if zero_padding:
        x = x * ops.cast(real, x.dtype)
    x = layers.Conv1D(units, kernel_size, padding="same", activation="relu", bias_initializer="ones")(x)
    context, weights = ScaledDotAttention(name="self_attention")(
        [x, x], mask=[padding, padding], return_attention_scores=True
    )
    weights = ops.where(real, weights, 0.0)
    context = layers.Add()([x, context])
    pooled = ops.max(ops.where(real, context, -3.0e38), axis=1)
    pooled = ops.where(ops.any(real, axis=1), pooled, 0.0)
    probability = layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    return keras.Model(tokens, {"probability": probability, "attention": weights}, name="trimmable")

"""A zoo of small Keras models of the kinds users ship, with random weights.

The one home of these builders: ``tests/test_zoo.py`` converts every one and
checks it on onnxruntime, and ``benchmarks/export_zoo.py`` measures what
converts with `export.convert` and with Keras's own
``model.export(format="onnx")`` (the README's table).

Each `Architecture` builds its model fresh (seeded); ``refused`` names the
layer type that `export.convert` refuses with `export.errors.UnsupportedLayerError`.
Keras is imported on the TensorFlow backend by `export.signature.tensorflow_keras`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from export.signature import tensorflow_keras

__all__ = ["ARCHITECTURES", "Architecture"]

VOCAB = 50
LENGTH = 12


@dataclass(frozen=True)
class Architecture:
    """A named model builder and what the exporter should do with it."""

    name: str
    kind: str
    build: Callable
    refused: str | None = None


def _seeded(build):
    def seeded():
        keras = tensorflow_keras()
        keras.utils.set_random_seed(0)
        return build(keras, keras.layers, keras.ops)

    seeded.__name__ = build.__name__
    return seeded


def _tokens(keras, length=LENGTH, name="tokens"):
    return keras.Input((length,), dtype="int32", name=name)


def _embed(layers, dim=16, **kwargs):
    return layers.Embedding(VOCAB, dim, embeddings_initializer=_normal(1.0), **kwargs)


def _normal(stddev):
    import keras

    return keras.initializers.RandomNormal(stddev=stddev, seed=1)


@_seeded
def mlp(keras, layers, ops):
    x = keras.Input((20,), name="features")
    h = layers.Dense(32, activation="relu")(x)
    h = layers.Dropout(0.3)(h)
    h = layers.Dense(16, activation="tanh")(h)
    return keras.Model(x, layers.Dense(3, activation="softmax", name="classes")(h), name="mlp")


@_seeded
def mlp_gelu(keras, layers, ops):
    x = keras.Input((20,), name="features")
    h = layers.Dense(32, activation="gelu")(x)
    h = layers.Dense(32, activation=lambda t: ops.gelu(t, approximate=True))(h)
    return keras.Model(x, layers.Dense(1, name="score")(h), name="mlp_gelu")


@_seeded
def conv1d_text(keras, layers, ops):
    t = _tokens(keras)
    h = _embed(layers)(t)
    h = layers.Conv1D(24, 3, padding="same", activation="relu")(h)
    h = layers.GlobalMaxPooling1D()(h)
    return keras.Model(t, layers.Dense(1, activation="sigmoid", name="probability")(h), name="conv1d_text")


def _rnn(cell, name, *, mask_zero=False, length=LENGTH, stack=False, bidirectional=False):
    @_seeded
    def build(keras, layers, ops):
        t = _tokens(keras, length)
        h = _embed(layers, mask_zero=mask_zero)(t)
        rnn = getattr(layers, cell)
        if stack:
            h = rnn(16, return_sequences=True)(h)
        last = rnn(16)
        h = layers.Bidirectional(last)(h) if bidirectional else last(h)
        return keras.Model(t, layers.Dense(1, activation="sigmoid", name="probability")(h), name=name)

    build.__name__ = name
    return build


def _transformer_block(layers, x, heads=2, dim=16, mask=None):
    attention = layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)(x, x, attention_mask=mask)
    x = layers.LayerNormalization(epsilon=1e-6)(x + attention)
    ffn = layers.Dense(2 * dim, activation="gelu")(x)
    ffn = layers.Dense(dim)(ffn)
    return layers.LayerNormalization(epsilon=1e-6)(x + ffn)


@_seeded
def transformer_text(keras, layers, ops):
    t = _tokens(keras)
    tokens = _embed(layers)(t)
    positions = layers.Embedding(LENGTH, 16)(ops.arange(LENGTH))
    x = _transformer_block(layers, tokens + positions)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(t, layers.Dense(2, activation="softmax", name="classes")(x), name="transformer_text")


@_seeded
def transformer_variable_length(keras, layers, ops):
    t = _tokens(keras, None)
    x = _embed(layers, mask_zero=True)(t)
    x = _transformer_block(layers, x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(t, layers.Dense(1, activation="sigmoid", name="probability")(x), name="transformer_variable_length")


@_seeded
def tiny_vit(keras, layers, ops):
    image = keras.Input((32, 32, 3), name="image")
    patches = layers.Conv2D(16, 8, strides=8)(image)  # 4 x 4 patches of 8 x 8 pixels
    x = layers.Reshape((16, 16))(patches)
    x = x + layers.Embedding(16, 16)(ops.arange(16))
    for _ in range(2):
        x = _transformer_block(layers, x)
    x = layers.LayerNormalization()(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(image, layers.Dense(5, name="logits")(x), name="tiny_vit")


def jittered(model):
    """Random weights that are not the initializers' (whose logits come out all equal)."""
    rng = np.random.default_rng(0)
    weights = []
    for variable in model.weights:
        value = np.asarray(variable)
        if "variance" in variable.path:
            value = rng.uniform(0.5, 1.5, value.shape)
        elif "count" not in variable.path and "mean" not in variable.path:
            value = value + rng.normal(0, 0.1, value.shape)
        weights.append(value.astype(value.dtype))
    for variable, value in zip(model.weights, weights):
        variable.assign(value)
    return model


@_seeded
def mobilenet_v2(keras, layers, ops):
    return jittered(
        keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4, classifier_activation=None
        )
    )


@_seeded
def efficientnet_b0(keras, layers, ops):
    # Its own Rescaling and Normalization layers are built in: constants in the traced graph.
    return jittered(
        keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=4, classifier_activation=None)
    )


@_seeded
def resnet_small(keras, layers, ops):
    image = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(image)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters, stride in ((16, 1), (32, 2)):
        shortcut = x if stride == 1 else layers.Conv2D(filters, 1, strides=stride)(x)
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        x = layers.ReLU()(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, layers.Dense(10, name="logits")(x), name="resnet_small")


@_seeded
def dict_inputs_outputs(keras, layers, ops):
    t = _tokens(keras, name="tokens")
    f = keras.Input((5,), name="numeric")
    h = layers.GlobalAveragePooling1D()(_embed(layers)(t))
    h = layers.Concatenate()([h, layers.Dense(8)(f)])
    outputs = {
        "rating": layers.Dense(1, name="rating")(h),
        "topic": layers.Dense(4, activation="softmax", name="topic")(h),
    }
    return keras.Model({"tokens": t, "numeric": f}, outputs, name="dict_inputs_outputs")


@_seeded
def time_distributed_variable(keras, layers, ops):
    x = keras.Input((None, 6), name="frames")
    h = layers.TimeDistributed(layers.Dense(8, activation="relu"))(x)
    h = layers.TimeDistributed(layers.Dense(3))(h)
    return keras.Model(x, h, name="time_distributed_variable")


@_seeded
def per_token_tagger(keras, layers, ops):
    t = _tokens(keras, None)
    h = _embed(layers, mask_zero=True)(t)
    h = layers.Bidirectional(layers.GRU(8, return_sequences=True))(h)
    return keras.Model(t, layers.Dense(5, activation="softmax", name="tags")(h), name="per_token_tagger")


@_seeded
def normalization_adapted(keras, layers, ops):
    x = keras.Input((6,), name="features")
    norm = layers.Normalization()
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, (200, 6)).astype("float32"))
    h = layers.Dense(8, activation="relu")(norm(x))
    return keras.Model(x, layers.Dense(1, name="score")(h), name="normalization_adapted")


@_seeded
def rescaling_conv(keras, layers, ops):
    image = keras.Input((16, 16, 3), name="image")
    x = layers.Rescaling(1 / 255.0, offset=-0.5)(image)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(image, layers.Dense(2, name="logits")(x), name="rescaling_conv")


def _subclassed_class():
    keras = tensorflow_keras()

    @keras.saving.register_keras_serializable(package="keras_attn_zoo")
    class ZooClassifier(keras.Model):
        """A subclassed text classifier: its own call(), no functional graph."""

        def __init__(self, units=16, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.embedding = keras.layers.Embedding(VOCAB, units)
            self.hidden = keras.layers.Dense(units, activation="relu")
            self.out = keras.layers.Dense(1, activation="sigmoid")

        def call(self, tokens):
            mask = keras.ops.cast(keras.ops.not_equal(tokens, 0), "float32")[..., None]
            h = self.hidden(self.embedding(tokens)) * mask
            return self.out(keras.ops.sum(h, axis=1) / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0))

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    return ZooClassifier


@_seeded
def subclassed(keras, layers, ops):
    model = _subclassed_class()(name="subclassed")
    model(np.ones((2, LENGTH), "int32"))  # built by a call, as users do
    return model


def _attention(options, name, *, length=LENGTH):
    @_seeded
    def build(keras, layers, ops):
        from keras_attn import ScaledDotAttention

        t = _tokens(keras, length)
        padding = ops.not_equal(t, 0)
        x = _embed(layers, 8)(t)
        q, v = layers.Dense(8)(x), layers.Dense(8)(x)
        layer_options = {k: v for k, v in options.items() if k != "causal"}
        context, weights = ScaledDotAttention(name="attention", **layer_options)(
            [q, v], mask=[padding, padding], return_attention_scores=True, use_causal_mask=options.get("causal", False)
        )
        pooled = layers.GlobalAveragePooling1D()(context, mask=padding)
        probability = layers.Dense(1, activation="sigmoid", name="probability")(pooled)
        return keras.Model(t, {"probability": probability, "attention": weights}, name=name)

    build.__name__ = name
    return build


@_seeded
def multi_head_learned_positions(keras, layers, ops):
    # Learned positions read the input's shape, not its ids: the position
    # table (LENGTH rows) is smaller than the encoder's vocabulary (VOCAB).
    from export.text import TextEncoder
    from keras_attn import MultiHeadScaledDotAttention

    t = _tokens(keras, None)
    padding = ops.not_equal(t, 0)
    positions = ops.cumsum(ops.ones_like(t), axis=1) - 1
    x = _embed(layers)(t) + layers.Embedding(LENGTH, 16)(positions)
    mask = ops.logical_and(ops.expand_dims(padding, 1), ops.expand_dims(padding, 2))
    context, heads = MultiHeadScaledDotAttention(num_heads=4, key_dim=4, dropout=0.1, name="attention")(
        x, x, attention_mask=mask, return_attention_scores=True
    )
    pooled = layers.GlobalAveragePooling1D()(context, mask=padding)
    probability = layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    model = keras.Model(t, {"probability": probability, "attention_heads": heads}, name="multi_head_learned_positions")
    model.text_encoder = TextEncoder([f"w{i}" for i in range(VOCAB - 2)], seq_len=LENGTH)
    return model


@_seeded
def sentiment_builder(keras, layers, ops):
    from keras_attn.models import build_sentiment_model

    return build_sentiment_model(VOCAB, LENGTH, embedding_dim=8, units=12, kernel_size=3)


@_seeded
def string_lookup(keras, layers, ops):
    words = keras.Input((4,), dtype="string", name="words")
    ids = layers.StringLookup(vocabulary=["good", "bad", "film"])(words)
    h = layers.GlobalAveragePooling1D()(layers.Embedding(5, 4)(ids))
    return keras.Model(words, layers.Dense(1, name="score")(h), name="string_lookup")


@_seeded
def integer_lookup(keras, layers, ops):
    codes = keras.Input((3,), dtype="int64", name="codes")
    ids = layers.IntegerLookup(vocabulary=[10, 20, 30])(codes)
    h = layers.Flatten()(layers.Embedding(5, 4)(ids))
    return keras.Model(codes, layers.Dense(1, name="score")(h), name="integer_lookup")


@_seeded
def hashed_oov_lookup(keras, layers, ops):
    words = keras.Input((4,), dtype="string", name="words")
    ids = layers.StringLookup(vocabulary=["good", "bad", "film"], num_oov_indices=2)(words)
    h = layers.GlobalAveragePooling1D()(layers.Embedding(6, 4)(ids))
    return keras.Model(words, layers.Dense(1, name="score")(h), name="hashed_oov_lookup")


ARCHITECTURES = [
    Architecture("mlp", "dense", mlp),
    Architecture("mlp_gelu", "dense, exact and tanh gelu", mlp_gelu),
    Architecture("conv1d_text", "text", conv1d_text),
    Architecture("simple_rnn_text", "text RNN", _rnn("SimpleRNN", "simple_rnn_text")),
    Architecture("gru_text", "text RNN", _rnn("GRU", "gru_text")),
    Architecture("lstm_text", "text RNN", _rnn("LSTM", "lstm_text")),
    Architecture("bilstm_text", "text RNN", _rnn("LSTM", "bilstm_text", bidirectional=True)),
    Architecture("lstm_stack_mask_zero", "variable length, masked", _rnn("LSTM", "lstm_stack_mask_zero", mask_zero=True, length=None, stack=True)),
    Architecture("gru_mask_zero", "variable length, masked", _rnn("GRU", "gru_mask_zero", mask_zero=True, length=None)),
    Architecture("per_token_tagger", "variable length, per-token head", per_token_tagger),
    Architecture("transformer_text", "keras-io transformer block, gelu", transformer_text),
    Architecture("transformer_variable_length", "transformer, variable length, masked", transformer_variable_length),
    Architecture("tiny_vit", "vision transformer, gelu", tiny_vit),
    Architecture("mobilenet_v2", "keras.applications", mobilenet_v2),
    Architecture("efficientnet_b0", "keras.applications, built-in Rescaling/Normalization", efficientnet_b0),
    Architecture("resnet_small", "residual conv net, BatchNorm", resnet_small),
    Architecture("dict_inputs_outputs", "dict inputs and outputs", dict_inputs_outputs),
    Architecture("time_distributed_variable", "TimeDistributed over a variable axis", time_distributed_variable),
    Architecture("normalization_adapted", "preprocessing: adapted Normalization", normalization_adapted),
    Architecture("rescaling_conv", "preprocessing: Rescaling", rescaling_conv),
    Architecture("subclassed", "subclassed model, called once", subclassed),
    Architecture("attention_default", "ScaledDotAttention", _attention({}, "attention_default")),
    Architecture("attention_concat", "ScaledDotAttention, concat scores", _attention({"score_mode": "concat", "use_scale": True}, "attention_concat")),
    Architecture("attention_causal", "ScaledDotAttention, causal", _attention({"causal": True}, "attention_causal")),
    Architecture("attention_variable_length", "ScaledDotAttention, variable length", _attention({"scale": 0.5}, "attention_variable_length", length=None)),
    Architecture("multi_head_learned_positions", "MultiHeadScaledDotAttention, learned positions, text encoder", multi_head_learned_positions),
    Architecture("sentiment_builder", "keras_attn.build_sentiment_model", sentiment_builder),
    Architecture("string_lookup", "StringLookup", string_lookup),
    Architecture("integer_lookup", "IntegerLookup", integer_lookup),
    Architecture("hashed_oov_lookup", "StringLookup, 2 hashed OOV buckets", hashed_oov_lookup, refused="StringLookup"),
]

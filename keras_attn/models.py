"""Builders for the sentiment model: tokens -> encoder -> attention -> P(positive)."""

import keras
from keras import layers, ops

from keras_attn.attention import ScaledDotAttention

# The tutorial's model, exactly: 112,133 parameters at vocab_size=3001.
TUTORIAL = dict(
    encoder="conv",
    embedding_dim=32,
    embedding_l2=0.001,
    units=100,
    kernel_size=4,
    dropout=0.0,
    pooling="flatten",
)


def build_sentiment_model(
    vocab_size,
    seq_len=32,
    *,
    encoder="conv",
    embedding_dim=32,
    embedding_l2=0.001,
    units=100,
    kernel_size=4,
    dropout=0.0,
    pooling="flatten",
    name="sentiment",
):
    """Embedding -> encoder -> self-attention -> pooling -> Dense(1, sigmoid).

    Args:
        vocab_size: number of token ids, padding (0) included.
        seq_len: tokens per sentence.
        encoder: `"conv"` (Conv1D, `units` filters of width `kernel_size`,
            same padding, relu) or `"lstm"` (a bidirectional LSTM of `units`
            units in all).
        embedding_dim: width of the word embeddings.
        embedding_l2: L2 penalty on the embeddings.
        units: width of the encoder's features.
        kernel_size: width of the convolution.
        dropout: dropout rate on the embeddings (whole channels) and on the
            pooled features; 0 turns both off.
        pooling: `"flatten"` (the tutorial: one weight per position and
            feature) or `"mean"` (average over the real tokens).
        name: the model's name.

    Returns:
        A functional `keras.Model` from int32 `tokens` of shape
        `(batch, seq_len)` to a dict of `probability` `(batch, 1)` and
        `attention` `(batch, seq_len, seq_len)`. The padding mask comes from
        the ids (`tokens != 0`): Conv1D and Flatten drop Keras masks.
    """
    if encoder not in ("conv", "lstm"):
        raise ValueError(f"encoder must be 'conv' or 'lstm', got {encoder!r}")
    if pooling not in ("flatten", "mean"):
        raise ValueError(f"pooling must be 'flatten' or 'mean', got {pooling!r}")
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    padding = ops.not_equal(tokens, 0)
    x = layers.Embedding(
        vocab_size,
        embedding_dim,
        embeddings_regularizer=keras.regularizers.L2(embedding_l2),
        name="embedding",
    )(tokens)
    if dropout:
        x = layers.SpatialDropout1D(dropout, name="embedding_dropout")(x)
    if encoder == "conv":
        x = layers.Conv1D(
            units, kernel_size, padding="same", activation="relu", name="conv"
        )(x)
    else:
        x = layers.Bidirectional(
            layers.LSTM(units // 2, return_sequences=True), name="lstm"
        )(x, mask=padding)
    context, weights = ScaledDotAttention(name="attention")(
        [x, x], mask=[padding, padding], return_attention_scores=True
    )
    if pooling == "flatten":
        pooled = layers.Flatten(name="flatten")(context)
    else:
        # Context is already 0 at padding (query mask); an all-padding row
        # divides by 1 instead of 0, where Keras's masked average gives NaN.
        real = ops.sum(ops.cast(padding, context.dtype), axis=1, keepdims=True)
        pooled = ops.sum(context, axis=1) / ops.maximum(real, 1.0)
    if dropout:
        pooled = layers.Dropout(dropout, name="dropout")(pooled)
    probability = layers.Dense(1, activation="sigmoid", name="probability")(
        pooled
    )
    return keras.Model(
        tokens, {"probability": probability, "attention": weights}, name=name
    )

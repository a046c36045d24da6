"""Text classifiers: tokens -> encoder -> attention -> pooling -> class probabilities.

`build_text_classifier` is the one architecture, for any number of classes;
`build_sentiment_model` is its two-class use, the bundled model's builder.
"""

import warnings

import numpy as np

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
    embedding_dropout=0.0,
    attention_dropout=0.0,
    pooled_dropout=0.0,
    residual=False,
    pooling="flatten",
)


def build_text_classifier(
    vocab_size,
    num_classes,
    *,
    seq_len=None,
    encoder="conv",
    embedding_dim=32,
    embedding_l2=0.001,
    units=100,
    kernel_size=3,
    embedding_dropout=0.3,
    attention_dropout=0.3,
    pooled_dropout=0.5,
    residual=True,
    pooling="max",
    name="text_classifier",
):
    """Embedding -> encoder -> self-attention -> pooling -> class probabilities.

    Two classes get one sigmoid unit, P(second class), as the bundled model
    has; more get a softmax over `num_classes` units. Train either with
    `classification_loss(num_classes)` on class indices. The defaults are
    the bundled model's recipe; `TUTORIAL` holds the tutorial's model.

    Args:
        vocab_size: number of token ids, padding (0) included.
        num_classes: number of classes, at least 2.
        seq_len: tokens per text. Only `"flatten"` pooling needs it (it
            fixes the length in the graph); with the others the model takes
            any length (None) or the given one, and since padding embeds to
            zero, a text gets the same numbers whatever padding follows it
            (the ONNX runtime skips padding that way).
        encoder: `"conv"` (Conv1D of `units` filters, same padding, relu)
            or `"lstm"` (a bidirectional LSTM of `units` units in all).
        embedding_dim: width of the word embeddings.
        embedding_l2: L2 penalty on the embeddings.
        units: width of the encoder's features.
        kernel_size: width of the convolution.
        embedding_dropout: rate of whole embedding channels dropped.
        attention_dropout: dropout rate on the attention's output.
        pooled_dropout: dropout rate on the pooled features.
        residual: add the encoder's features to the attention's output.
        pooling: `"flatten"` (the tutorial: one weight per position and
            feature), `"max"` or `"mean"` over the real tokens.
        name: the model's name.

    Returns:
        A functional `keras.Model` from int32 `tokens` of shape
        `(batch, seq_len)` to a dict of `probability`, `(batch, 1)` for two
        classes and `(batch, num_classes)` otherwise, and `attention`
        `(batch, seq_len, seq_len)`, the attention's weights with rows and
        columns of padding at 0. The padding mask comes from the ids
        (`tokens != 0`): Conv1D and Flatten drop Keras masks.

    Raises:
        ValueError: an unknown `encoder` or `pooling`, fewer than 2
            classes, or `"flatten"` pooling without a `seq_len`.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if pooling == "flatten" and seq_len is None:
        raise ValueError("'flatten' pooling needs a seq_len: it fixes the length in the graph")
    if encoder not in ("conv", "lstm"):
        raise ValueError(f"encoder must be 'conv' or 'lstm', got {encoder!r}")
    if pooling not in ("flatten", "max", "mean"):
        raise ValueError(
            f"pooling must be 'flatten', 'max' or 'mean', got {pooling!r}"
        )
    length = seq_len if pooling == "flatten" else None
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    padding = ops.not_equal(tokens, 0)
    real = ops.expand_dims(padding, axis=-1)
    x = layers.Embedding(
        vocab_size,
        embedding_dim,
        embeddings_regularizer=keras.regularizers.L2(embedding_l2),
        name="embedding",
    )(tokens)
    # Padding embeds to 0, as the convolution's own "same" padding does.
    x = ops.where(real, x, 0.0)
    if embedding_dropout:
        x = layers.SpatialDropout1D(embedding_dropout)(x)
    if encoder == "conv":
        x = layers.Conv1D(
            units, kernel_size, padding="same", activation="relu", name="conv"
        )(x)
    else:
        x = layers.Bidirectional(
            layers.LSTM(units // 2, return_sequences=True), name="lstm"
        )(x, mask=padding)
    context, weights = ScaledDotAttention(name="self_attention")(
        [x, x], mask=[padding, padding], return_attention_scores=True
    )
    # Keras's contract leaves the weights of padding queries in place; a
    # named layer (not an op) also names the model's output "attention".
    weights = layers.Multiply(name="attention")(
        [weights, ops.cast(real, weights.dtype)]
    )
    if attention_dropout:
        context = layers.Dropout(attention_dropout)(context)
    if residual:
        context = layers.Add()([x, context])
    pooled = _pool(context, real, pooling)
    if pooled_dropout:
        pooled = layers.Dropout(pooled_dropout)(pooled)
    if num_classes == 2:
        probability = layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    else:
        probability = layers.Dense(num_classes, activation="softmax", name="probability")(pooled)
    return keras.Model(
        tokens, {"probability": probability, "attention": weights}, name=name
    )


def build_sentiment_model(vocab_size, seq_len=32, *, name="sentiment", **options):
    """The two-class (negative, positive) `build_text_classifier`: P(positive) out.

    Args:
        vocab_size: number of token ids, padding (0) included.
        seq_len: tokens per sentence (see `build_text_classifier`).
        name: the model's name.
        **options: any keyword of `build_text_classifier`.

    Returns:
        The model, with `probability` of shape `(batch, 1)`.
    """
    return build_text_classifier(vocab_size, 2, seq_len=seq_len, name=name, **options)


def classification_loss(num_classes):
    """The loss matching `build_text_classifier`'s head, on class indices as targets."""
    return "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"


def class_probabilities(probability):
    """`(n, num_classes)` probabilities from the `probability` output.

    The two-class head's one unit, P(second class) `p`, becomes `[1 - p, p]`,
    so `argmax` picks the second class exactly when `p > 0.5`.
    """
    probability = np.asarray(probability)
    if probability.ndim != 2:
        raise ValueError(f"expected a (batch, units) probability, got shape {probability.shape}")
    if probability.shape[1] == 1:
        return np.concatenate([1 - probability, probability], axis=1)
    return probability


def _pool(context, real, pooling):
    """Pools `(batch, seq_len, units)` over the real tokens."""
    if pooling == "flatten":
        # Flatten warns that it drops the attention's mask: with one weight
        # per position, the Dense layer learns what padding means anyway.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Layer 'flatten'", UserWarning)
            return layers.Flatten()(context)
    if pooling == "max":
        pooled = ops.max(ops.where(real, context, -3.0e38), axis=1)
        # An all-padding row (an empty text) pools to 0, not -3e38.
        return ops.where(ops.any(real, axis=1), pooled, 0.0)
    # An all-padding row divides by 1 instead of 0 (Keras's masked average
    # gives NaN there).
    count = ops.sum(ops.cast(real, context.dtype), axis=1)
    total = ops.sum(ops.where(real, context, 0.0), axis=1)
    return total / ops.maximum(count, 1.0)

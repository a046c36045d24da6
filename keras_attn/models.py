"""Text classifiers: tokens -> encoder -> attention -> pooling -> class probabilities.

`build_text_classifier` is the one builder, for any number of classes and
three encoders (a convolution or an LSTM under one self-attention, or a
transformer of multi-head blocks); `build_sentiment_model` is its two-class
use, the bundled model's builder.
"""

import warnings

import numpy as np

import keras
from keras import layers, ops

from keras_attn.attention import MultiHeadScaledDotAttention, ScaledDotAttention

#: The encoders `build_text_classifier` builds.
ENCODERS = ("conv", "lstm", "transformer")

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
    pooling=None,
    num_heads=4,
    num_layers=2,
    feed_forward_activation="gelu",
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
        seq_len: tokens per text. `"flatten"` pooling needs it (it fixes
            the length in the graph), and so does the transformer (it sizes
            the position table: the model then takes up to `seq_len`
            tokens); otherwise the model takes any length. Padding never
            changes a text's numbers (it embeds to zero and is masked out
            of attention), so the ONNX runtime may cut it.
        encoder: `"conv"` (Conv1D of `units` filters, same padding, relu),
            `"lstm"` (a bidirectional LSTM of `units` units in all), both
            under one `ScaledDotAttention`; or `"transformer"`: token plus
            learned position embeddings, then `num_layers` pre-norm blocks
            of `MultiHeadScaledDotAttention` (`num_heads` heads of
            `embedding_dim // num_heads`) and a feed-forward layer of
            `units` gelu units, each added to its input, and a final
            LayerNormalization.
        embedding_dim: width of the word embeddings.
        embedding_l2: L2 penalty on the embeddings.
        units: width of the encoder's features.
        kernel_size: width of the convolution.
        embedding_dropout: rate of whole embedding channels dropped.
        attention_dropout: dropout rate on the attention's output (the
            transformer: on each block's attention and feed-forward output).
        pooled_dropout: dropout rate on the pooled features.
        residual: add the encoder's features to the attention's output
            (conv and lstm; the transformer's blocks are residual anyway).
        pooling: `"flatten"` (the tutorial: one weight per position and
            feature), `"max"` or `"mean"` over the real tokens. Default:
            `"max"`, `"mean"` for the transformer.
        num_heads: the transformer's attention heads.
        num_layers: the transformer's blocks.
        feed_forward_activation: the activation of the transformer's
            feed-forward layers (any Keras activation name).
        name: the model's name.

    Returns:
        A functional `keras.Model` from int32 `tokens` of shape
        `(batch, seq_len)` to a dict of `probability`, `(batch, 1)` for two
        classes and `(batch, num_classes)` otherwise, and `attention`
        `(batch, seq_len, seq_len)`, the attention's weights with rows and
        columns of padding at 0 (the transformer's: its last block's,
        averaged over heads; its per-head weights are a third output,
        `attention_heads`, `(batch, num_heads, seq_len, seq_len)`). The
        padding mask comes from the ids (`tokens != 0`): Conv1D and Flatten
        drop Keras masks.

    Raises:
        ValueError: an unknown `encoder` or `pooling`, fewer than 2
            classes, `"flatten"` pooling or the transformer without a
            `seq_len`, or fewer than 1 head or block.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(map(repr, ENCODERS))}, got {encoder!r}")
    if pooling is None:
        pooling = default_pooling(encoder)
    if pooling == "flatten" and seq_len is None:
        raise ValueError("'flatten' pooling needs a seq_len: it fixes the length in the graph")
    if pooling not in ("flatten", "max", "mean"):
        raise ValueError(
            f"pooling must be 'flatten', 'max' or 'mean', got {pooling!r}"
        )
    if encoder == "transformer":
        if seq_len is None:
            raise ValueError("the transformer needs a seq_len: it sizes the position table")
        if num_heads < 1 or num_layers < 1:
            raise ValueError(f"num_heads and num_layers must be >= 1, got {num_heads}, {num_layers}")
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
    if encoder == "transformer":
        context, weights, heads = _transformer(
            x, tokens, padding, seq_len, embedding_dim, units, embedding_dropout, attention_dropout, num_heads, num_layers,
            feed_forward_activation,
        )
        outputs = {"attention_heads": layers.Identity(name="attention_heads")(heads)}
    else:
        context, weights = _attend(
            x, padding, encoder, units, kernel_size, embedding_dropout, attention_dropout, residual
        )
        outputs = {}
    # Keras's contract leaves the weights of padding queries in place; a
    # named layer (not an op) also names the model's output "attention".
    weights = layers.Multiply(name="attention")(
        [weights, ops.cast(real, weights.dtype)]
    )
    pooled = _pool(context, real, pooling)
    if pooled_dropout:
        pooled = layers.Dropout(pooled_dropout)(pooled)
    if num_classes == 2:
        probability = layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    else:
        probability = layers.Dense(num_classes, activation="softmax", name="probability")(pooled)
    return keras.Model(
        tokens, {"probability": probability, "attention": weights, **outputs}, name=name
    )


def _attend(x, padding, encoder, units, kernel_size, embedding_dropout, attention_dropout, residual):
    """Conv1D or LSTM features under one self-attention: (features, weights)."""
    real = ops.expand_dims(padding, axis=-1)
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
    if attention_dropout:
        context = layers.Dropout(attention_dropout)(context)
    if residual:
        context = layers.Add()([x, context])
    return context, weights


def _transformer(
    x, tokens, padding, seq_len, dim, units, embedding_dropout, attention_dropout, num_heads, num_layers, activation
):
    """Pre-norm multi-head blocks over token + position embeddings.

    Returns (features, the last block's weights averaged over heads, its
    per-head weights).
    """
    # Positions count the tokens from 0: made from the ids' shape, so a
    # text's positions do not depend on the padding after it.
    positions = ops.cumsum(ops.ones_like(tokens), axis=1) - 1
    x = x + layers.Embedding(seq_len, dim, name="position_embedding")(positions)
    if embedding_dropout:
        x = layers.SpatialDropout1D(embedding_dropout)(x)
    # A query attends to real keys only; padding queries are fully masked
    # (zero weights, zero attention output).
    mask = ops.logical_and(ops.expand_dims(padding, 1), ops.expand_dims(padding, 2))
    for block in range(1, num_layers + 1):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_attention_norm")(x)
        attention = MultiHeadScaledDotAttention(num_heads, max(dim // num_heads, 1), name=f"block{block}_attention")
        if block < num_layers:  # without weights: the fused kernel where the backend has one
            h = attention(h, h, attention_mask=mask)
        else:
            h, heads = attention(h, h, attention_mask=mask, return_attention_scores=True)
        if attention_dropout:
            h = layers.Dropout(attention_dropout)(h)
        x = layers.Add()([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_feed_forward_norm")(x)
        h = layers.Dense(units, activation=activation, name=f"block{block}_feed_forward")(h)
        h = layers.Dense(dim, name=f"block{block}_feed_forward_out")(h)
        if attention_dropout:
            h = layers.Dropout(attention_dropout)(h)
        x = layers.Add()([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    return x, ops.mean(heads, axis=1), heads


def default_pooling(encoder):
    """The pooling an encoder gets unless told: a mean over the transformer's tokens, a max otherwise."""
    return "mean" if encoder == "transformer" else "max"


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

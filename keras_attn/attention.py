import numbers

import keras
from keras import ops

# Scores and softmax run at least in float32: under mixed_float16, Keras's own
# Attention overflows (|scores| > 65504) and fills masked keys with -65504,
# which gives NaN for fully masked rows.
_LOW_PRECISION = ("float16", "bfloat16")
# Valid scores are clipped to +-_SCORE_LIMIT and masked keys get _MASKED_SCORE
# added: a masked key stays below every valid one, and the sum stays finite
# (so a fully masked row never meets inf - inf or 0 / 0, in a gradient either).
_SCORE_LIMIT = 1e30
_MASKED_SCORE = -1e37
#: Backends whose `keras.ops.dot_product_attention` is a fused kernel (JAX's
#: and torch's). TensorFlow's is the same einsum math as the plain path, and
#: its Einsum nodes would reach the exported ONNX graph, where onnxruntime's
#: CPU Einsum is slow: there the plain path (MatMul) runs.
FUSED_BACKENDS = ("jax", "torch")


def score_dtype(dtype):
    """The dtype scores and softmax run in: float32 for float16/bfloat16 inputs."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in _LOW_PRECISION else dtype


def mask_terms(allowed, axis, dtype):
    """The one masking rule, as `(bias, keep)`; `(None, None)` without a mask.

    `bias` (0 where a key is allowed, `_MASKED_SCORE` where not) is added to
    the scores once; `keep` (1, or 0 for a query whose every key is masked)
    multiplies the weights or the attention output, so that such a query
    attends to nothing: all-zero weights and a zero output, never NaN and
    never the uniform weights a softmax gives a row of equal scores.

    Args:
        allowed: boolean mask broadcastable to the scores, or None.
        axis: the key axis or axes of the scores (the softmax's).
        dtype: the scores' dtype.
    """
    if allowed is None:
        return None, None
    allowed = ops.cast(allowed, "bool")
    bias = ops.where(allowed, ops.cast(0.0, dtype), ops.cast(_MASKED_SCORE, dtype))
    keep = ops.cast(ops.any(allowed, axis=axis, keepdims=True), dtype)
    return bias, keep


def masked_softmax(scores, allowed=None, axis=-1):
    """Attention weights from scores: a softmax over the allowed keys.

    The plain path of both attention layers. Masked keys get a weight of
    exactly 0 and a query with no allowed key gets all-zero weights
    (`mask_terms`). Scores are clipped to +-1e30 first, so huge scores never
    become inf.

    Args:
        scores: float32 (or wider) scores.
        allowed: boolean mask broadcastable to `scores`, or None.
        axis: the key axis or axes.
    """
    scores = ops.clip(scores, -_SCORE_LIMIT, _SCORE_LIMIT)
    bias, keep = mask_terms(allowed, axis, scores.dtype)
    if bias is not None:
        scores = scores + bias
    if isinstance(axis, tuple):
        # Over several key axes as Keras's Softmax layer does it (TensorFlow's
        # softmax takes one axis of a tensor of rank <= 5).
        weights = ops.exp(scores - ops.logsumexp(scores, axis=axis, keepdims=True))
    else:
        weights = ops.softmax(scores, axis=axis)
    return weights if keep is None else weights * keep


def causal_mask(tq, tv):
    """`(Tq, Tv)` booleans: query `i` may attend to keys `j <= i`."""
    return ops.expand_dims(ops.arange(tq), axis=-1) >= ops.arange(tv)


def fused_attention(query, key, value, allowed=None, scale=None, flash_attention=None):
    """`softmax(scale * query @ key^T) @ value` by `keras.ops.dot_product_attention`.

    The fused path of `MultiHeadScaledDotAttention`, under the same rule as
    `masked_softmax`: the mask goes in as the same additive bias, and the
    output of a query with no allowed key is zeroed. Runs in float32 for
    float16/bfloat16 inputs; returns `value`'s dtype.

    Args:
        query: `(batch, Tq, heads, key_dim)`.
        key: `(batch, Tv, heads, key_dim)`.
        value: `(batch, Tv, heads, value_dim)`.
        allowed: boolean mask broadcastable to `(batch, heads, Tq, Tv)`, or None.
        scale: multiplier of the scores (default `1 / sqrt(key_dim)`).
        flash_attention: passed to `keras.ops.dot_product_attention`.
    """
    dtype = score_dtype(query.dtype)
    bias, keep = mask_terms(allowed, -1, dtype)
    output = ops.dot_product_attention(
        ops.cast(query, dtype),
        ops.cast(key, dtype),
        ops.cast(value, dtype),
        bias=bias,
        scale=scale,
        flash_attention=flash_attention,
    )
    if keep is not None:
        # (batch, heads, Tq, 1) -> (batch, Tq, heads, 1), as the output's axes.
        output = output * ops.transpose(keep, (0, 2, 1, 3))
    return ops.cast(output, value.dtype)


@keras.saving.register_keras_serializable(package="keras_attn")
class ScaledDotAttention(keras.layers.Layer):
    """Scaled dot-product attention: a drop-in for `keras.layers.Attention`.

    Computes `softmax(scale * query @ key^T) @ value`, with
    `scale = 1 / sqrt(d_k)` by default as in "Attention Is All You Need".
    Constructor, call arguments, masks, outputs, errors and weight names are
    those of `keras.layers.Attention`; with `scale=1.0` the numbers are Keras's
    too, so a model built with `keras.layers.Attention` loads its weights.

    Inputs are a list with 2 or 3 elements:
    1. A `query` tensor of shape `(batch_size, Tq, dim)`.
    2. A `value` tensor of shape `(batch_size, Tv, dim)`.
    3. An optional `key` tensor of shape `(batch_size, Tv, dim)`. If none
        is supplied, `value` is used as the `key`.

    Args:
        use_scale: If `True`, also learn a scalar multiplier of the scores,
            initialised to 1 (Keras's `use_scale`). It multiplies `scale`:
            `scores = learned * scale * query @ key^T`. In `"concat"` mode it
            scales `query + key` inside the tanh, as in Keras.
        score_mode: Function used to compute attention scores, one of
            `{"dot", "concat"}`. `"dot"` is the dot product of the query and
            key vectors. `"concat"` is the sum over features of the hyperbolic
            tangent of `query + key`, times a learned weight (Keras's
            definition).
        dropout: Float between 0 and 1. Fraction of the attention weights to
            drop in training. Defaults to `0.0`.
        seed: A Python integer to use as random seed in case of `dropout`.
        scale: Fixed multiplier of the scores, applied in both score modes.
            `None` (default) means `1 / sqrt(d_k)`, `d_k` being the key's last
            dimension; a float is used as given; `1.0` reproduces
            `keras.layers.Attention` exactly.

    Call arguments:
        inputs: List of the following tensors:
            - `query`: Query tensor of shape `(batch_size, Tq, dim)`.
            - `value`: Value tensor of shape `(batch_size, Tv, dim)`.
            - `key`: Optional key tensor of shape `(batch_size, Tv, dim)`. If
                not given, `value` is used for both `key` and `value`.
        mask: List of the following tensors:
            - `query_mask`: A boolean mask tensor of shape `(batch_size, Tq)`.
                If given, the output is zero at the positions where
                `mask==False`.
            - `value_mask`: A boolean mask tensor of shape `(batch_size, Tv)`.
                If given, values at positions where `mask==False` do not
                contribute to the result and get a weight of exactly 0.
        training: Python boolean indicating whether the layer should behave in
            training mode (adding dropout) or in inference mode (no dropout).
        return_attention_scores: bool, if `True`, also return the attention
            weights (after masking and softmax).
        use_causal_mask: Boolean. Set to `True` for decoder self-attention:
            position `i` cannot attend to positions `j > i`.

    Output:
        Attention outputs of shape `(batch_size, Tq, dim)`.
        (Optional) Attention weights after masking and softmax, of shape
            `(batch_size, Tq, Tv)`.

    A query whose every key is masked (a fully masked row) attends to
    nothing: its weights are all 0 and its output is 0, never NaN. Under a
    `mixed_float16` policy the scores and the softmax run in float32, so
    very large scores stay finite as well.
    """

    def __init__(
        self,
        use_scale=False,
        score_mode="dot",
        dropout=0.0,
        seed=None,
        scale=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if score_mode not in ["dot", "concat"]:
            raise ValueError(
                "Invalid value for argument score_mode. "
                "Expected one of {'dot', 'concat'}. "
                f"Received: score_mode={score_mode}"
            )
        if scale is not None and not isinstance(scale, numbers.Real):
            raise ValueError(
                "Invalid value for argument scale. Expected None or a "
                f"float. Received: scale={scale}"
            )
        self.use_scale = use_scale
        self.score_mode = score_mode
        self.dropout = dropout
        self.seed = seed
        self.scale = None if scale is None else float(scale)
        self.supports_masking = True
        if self.dropout > 0:
            self.seed_generator = keras.random.SeedGenerator(seed=seed)

    def build(self, input_shape):
        self._validate_inputs(input_shape)
        # Same weight names and order as keras.layers.Attention.
        self.learned_scale = None
        self.concat_score_weight = None
        if self.use_scale:
            self.learned_scale = self.add_weight(
                name="scale",
                shape=(),
                initializer="ones",
                dtype=self.dtype,
                trainable=True,
            )
        if self.score_mode == "concat":
            self.concat_score_weight = self.add_weight(
                name="concat_score_weight",
                shape=(),
                initializer="ones",
                dtype=self.dtype,
                trainable=True,
            )

    def call(
        self,
        inputs,
        mask=None,
        training=False,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        self._validate_inputs(inputs=inputs, mask=mask)
        query = inputs[0]
        value = inputs[1]
        key = inputs[2] if len(inputs) > 2 else value
        query_mask = mask[0] if mask else None
        value_mask = mask[1] if mask else None

        scores = self._calculate_scores(query, key)
        allowed = self._calculate_score_mask(
            scores, value_mask, use_causal_mask
        )
        weights = masked_softmax(scores, allowed)
        if training and self.dropout > 0:
            weights = keras.random.dropout(
                weights, self.dropout, seed=self.seed_generator
            )
        weights = ops.cast(weights, value.dtype)
        output = ops.matmul(weights, value)
        if query_mask is not None:
            query_mask = ops.expand_dims(query_mask, axis=-1)
            output = ops.where(query_mask, output, 0)
        if return_attention_scores:
            return output, weights
        return output

    def _calculate_scores(self, query, key):
        """Scores of shape `(batch_size, Tq, Tv)`, in float32 or wider."""
        dtype = score_dtype(query.dtype)
        query = ops.cast(query, dtype)
        key = ops.cast(key, dtype)
        scale = self.scale
        if scale is None:
            scale = 1.0 / float(key.shape[-1]) ** 0.5
        if self.score_mode == "dot":
            scores = ops.matmul(query, ops.swapaxes(key, -2, -1))
            if self.learned_scale is not None:
                scores = scores * ops.cast(self.learned_scale, dtype)
        else:
            # [batch, Tq, 1, dim] + [batch, 1, Tv, dim] -> [batch, Tq, Tv, dim]
            pairs = ops.expand_dims(query, axis=-2) + ops.expand_dims(
                key, axis=-3
            )
            if self.learned_scale is not None:
                pairs = pairs * ops.cast(self.learned_scale, dtype)
            scores = ops.cast(self.concat_score_weight, dtype) * ops.sum(
                ops.tanh(pairs), axis=-1
            )
        if scale != 1.0:
            scores = scores * scale
        return scores

    def _calculate_score_mask(self, scores, v_mask, use_causal_mask):
        """Boolean mask broadcastable to the scores, or None if all allowed."""
        allowed = None
        if v_mask is not None:
            # [batch, Tv] -> [batch, 1, Tv]
            allowed = ops.expand_dims(ops.cast(v_mask, "bool"), axis=-2)
        if use_causal_mask:
            tq, tv = ops.shape(scores)[-2], ops.shape(scores)[-1]
            causal = ops.expand_dims(causal_mask(tq, tv), axis=0)
            allowed = (
                causal if allowed is None else ops.logical_and(allowed, causal)
            )
        return allowed

    def compute_mask(self, inputs, mask=None):
        self._validate_inputs(inputs=inputs, mask=mask)
        if mask is None or mask[0] is None:
            return None
        return ops.convert_to_tensor(mask[0])

    def compute_output_shape(self, input_shape):
        query_shape = input_shape[0]
        value_shape = input_shape[1]
        return (*query_shape[:-1], value_shape[-1])

    def compute_output_spec(
        self,
        inputs,
        mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        self._validate_inputs(inputs, mask)
        query = inputs[0]
        value = inputs[1]
        key = inputs[2] if len(inputs) > 2 else value
        output_shape = self.compute_output_shape(
            [query.shape, value.shape, key.shape]
        )
        output_spec = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if return_attention_scores:
            weights_shape = (*query.shape[:-1], key.shape[-2])
            return output_spec, keras.KerasTensor(
                weights_shape, dtype=self.compute_dtype
            )
        return output_spec

    def _validate_inputs(self, inputs, mask=None):
        """Raises the errors of `keras.layers.Attention`, word for word."""
        class_name = self.__class__.__name__
        if not isinstance(inputs, list):
            raise ValueError(
                f"{class_name} layer must be called on a list of inputs, "
                "namely [query, value] or [query, value, key]. "
                f"Received: inputs={inputs}."
            )
        if len(inputs) < 2 or len(inputs) > 3:
            raise ValueError(
                f"{class_name} layer accepts inputs list of length 2 or 3, "
                "namely [query, value] or [query, value, key]. "
                f"Received length: {len(inputs)}."
            )
        if mask is not None:
            if not isinstance(mask, list):
                raise ValueError(
                    f"{class_name} layer mask must be a list, "
                    f"namely [query_mask, value_mask]. Received: mask={mask}."
                )
            if len(mask) < 2 or len(mask) > 3:
                raise ValueError(
                    f"{class_name} layer accepts mask list of length 2 or 3. "
                    f"Received: inputs={inputs}, mask={mask}."
                )

    def get_config(self):
        base_config = super().get_config()
        config = {
            "use_scale": self.use_scale,
            "score_mode": self.score_mode,
            "dropout": self.dropout,
            "seed": self.seed,
            "scale": self.scale,
        }
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="keras_attn")
class MultiHeadScaledDotAttention(keras.layers.MultiHeadAttention):
    """Multi-head attention: a drop-in for `keras.layers.MultiHeadAttention`.

    Projects `query`, `key` and `value` into `num_heads` heads, computes
    `softmax(query @ key^T / sqrt(key_dim)) @ value` in each head and
    projects the concatenated heads back, as in "Attention Is All You Need".
    Constructor, call arguments, Keras masks, outputs, errors and weights
    (names and order) are those of `keras.layers.MultiHeadAttention`, so
    `set_weights` moves weights between the two layers; the numbers agree
    wherever Keras's own plain and fused paths agree with each other.

    What differs, on purpose:
    - One rule for a query whose every key is masked (by `attention_mask`,
      the Keras masks, a causal or sliding-window mask): all-zero weights and
      a zero attention output before the output projection (so the layer's
      output there is the projection's bias), on the plain path, the fused
      path, under `mixed_float16` and in an exported ONNX file. Keras gives
      zero weights on its plain path and uniform ones on its fused path.
    - Scores and softmax run in float32 under mixed precision.
    - The fused path (`keras.ops.dot_product_attention`, on the backends of
      `FUSED_BACKENDS` or when `flash_attention=True`) runs whenever the
      weights are not asked for and no dropout applies, which includes
      inference with `dropout > 0`; Keras turns it off whenever
      `dropout > 0`. On JAX with `value_dim != key_dim`, where Keras's fused
      path crashes, the plain path runs.

    Args:
        num_heads: Number of attention heads.
        key_dim: Size of each attention head for query and key.
        value_dim: Size of each attention head for value (default `key_dim`).
        dropout: Fraction of the attention weights dropped in training.
        use_bias: Boolean, whether the dense layers use bias vectors/matrices.
        output_shape: The expected shape of an output tensor, besides the
            batch and sequence dims. If not specified, projects back to the
            query feature dim (the query input's last dimension).
        attention_axes: axes over which the attention is applied. `None`
            means attention over all axes, but batch, heads, and features.
        sliding_window: Optional positive integer: each query attends only to
            keys within `sliding_window - 1` positions of itself.
        flash_attention: `True` forces the fused path with the backend's
            flash kernel (no weights can then be returned, no dropout set);
            `False` or `None` let the layer pick (see above). Defaults to
            `keras.config.is_flash_attention_enabled()`.
        kernel_initializer: Initializer for dense layer kernels.
        bias_initializer: Initializer for dense layer biases.
        kernel_regularizer: Regularizer for dense layer kernels.
        bias_regularizer: Regularizer for dense layer biases.
        activity_regularizer: Regularizer for dense layer activity.
        kernel_constraint: Constraint for dense layer kernels.
        bias_constraint: Constraint for dense layer biases.
        use_gate: Boolean, whether to gate the attention output with a
            sigmoid projection of the query (Gated Attention).
        seed: Optional integer to seed the dropout.

    Call arguments:
        query: Query tensor of shape `(B, T, dim)`.
        value: Value tensor of shape `(B, S, dim)`.
        key: Optional key tensor of shape `(B, S, dim)`. If not given,
            `value` is used for both `key` and `value`.
        query_mask, value_mask, key_mask: Boolean masks of shape `(B, T)` /
            `(B, S)`; taken from the inputs' Keras masks.
        attention_mask: A boolean mask of shape `(B, T, S)`: 1 where a query
            may attend to a key, 0 where not. Broadcasts over missing batch
            and head dimensions.
        return_attention_scores: If `True`, also return the attention weights
            (after masking and softmax); the plain path then runs.
        training: Python boolean: training mode (dropout) or inference.
        use_causal_mask: If `True`, query `i` cannot attend to keys `j > i`.

    Output:
        Attention outputs of shape `(B, T, E)`, `E` the query's last
        dimension unless `output_shape` is given.
        (Optional) Per-head attention weights of shape `(B, num_heads, T, S)`.
    """

    def __init__(self, num_heads, key_dim, *args, flash_attention=None, **kwargs):
        super().__init__(num_heads, key_dim, *args, flash_attention=flash_attention, **kwargs)
        # Keras resolves it against the global setting and leaves it out of
        # its config; the argument as given is kept so that the config holds it.
        self._flash_attention_argument = flash_attention

    def get_config(self):
        return {**super().get_config(), "flash_attention": self._flash_attention_argument}

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Attention of the projected heads, under the one masking rule.

        Args:
            query: Projected query of shape `(B, T, N, key_dim)`.
            key: Projected key of shape `(B, S, N, key_dim)`.
            value: Projected value of shape `(B, S, N, value_dim)`.
            attention_mask: Boolean mask broadcastable to `(B, T, S)`.
            training: Whether dropout applies.
            return_attention_scores: Whether the weights are needed.
            use_causal_mask: Also mask keys after each query.

        Returns:
            `(attention_output, weights)`; weights are None on the fused path.
        """
        if self._flash_attention and return_attention_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash "
                "attention is enabled. Please disable flash attention to access"
                " attention scores."
            )
        allowed = attention_mask
        if use_causal_mask:
            causal = causal_mask(ops.shape(query)[1], ops.shape(key)[1])
            allowed = causal if allowed is None else ops.logical_and(ops.cast(allowed, "bool"), causal)
        if allowed is not None:
            # (B, T, S) -> (B, 1, T, S): the head axis (Keras's expansion).
            axis = -len(self._attention_axes) * 2 - 1
            for _ in range(len(query.shape) - len(allowed.shape)):
                allowed = ops.expand_dims(allowed, axis=axis)
        dropping = bool(training) and self._dropout > 0.0
        if not (return_attention_scores or dropping) and self._fused(query, value):
            output = fused_attention(
                query, key, value, allowed, self._inverse_sqrt_key_dim, self._flash_attention
            )
            return output, None
        dtype = score_dtype(query.dtype)
        query = ops.cast(query, dtype) * ops.cast(self._inverse_sqrt_key_dim, dtype)
        key = ops.cast(key, dtype)
        if len(query.shape) == 4:
            # MatMul over (B, N, T, H): Einsum is slow on onnxruntime's CPU.
            scores = ops.matmul(ops.transpose(query, (0, 2, 1, 3)), ops.transpose(key, (0, 2, 3, 1)))
        else:
            scores = ops.einsum(self._dot_product_equation, key, query)
        rank, keys = len(scores.shape), len(self._attention_axes)
        key_axes = tuple(range(rank - keys, rank)) if keys > 1 else -1
        weights = masked_softmax(scores, allowed, axis=key_axes)
        if dropping:
            dropped = self._dropout_layer(weights, training=training)
        else:
            dropped = weights
        dropped = ops.cast(dropped, value.dtype)
        if len(query.shape) == 4:
            output = ops.transpose(ops.matmul(dropped, ops.transpose(value, (0, 2, 1, 3))), (0, 2, 1, 3))
        else:
            output = ops.einsum(self._combine_equation, dropped, value)
        return output, ops.cast(weights, value.dtype)

    def _fused(self, query, value):
        """Whether the fused kernel runs (weights not asked for, no dropout applied)."""
        if len(query.shape) != 4:
            return False
        if self._flash_attention:
            return True
        backend = keras.backend.backend()
        if backend == "jax" and query.shape[-1] != value.shape[-1]:
            return False  # jax.nn.dot_product_attention needs one head size
        return backend in FUSED_BACKENDS

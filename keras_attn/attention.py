import numbers

import keras
from keras import ops

# Scores and softmax run at least in float32: under mixed_float16, Keras's own
# Attention overflows (|scores| > 65504) and fills masked keys with -65504,
# which gives NaN for fully masked rows.
_LOW_PRECISION = ("float16", "bfloat16")
# Masked keys get the lowest float32; valid scores are clipped just above it so
# a masked key can never outrank a valid one, and inf never reaches softmax.
_SCORE_LIMIT = 1e38


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
        if allowed is not None:
            scores = ops.where(allowed, scores, -3.4e38)
        weights = ops.softmax(scores, axis=-1)
        if allowed is not None:
            # Zeroes the uniform weights of fully masked rows.
            weights = ops.where(allowed, weights, 0.0)
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
        dtype = keras.backend.standardize_dtype(query.dtype)
        dtype = "float32" if dtype in _LOW_PRECISION else dtype
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
        return ops.clip(scores, -_SCORE_LIMIT, _SCORE_LIMIT)

    def _calculate_score_mask(self, scores, v_mask, use_causal_mask):
        """Boolean mask broadcastable to the scores, or None if all allowed."""
        allowed = None
        if v_mask is not None:
            # [batch, Tv] -> [batch, 1, Tv]
            allowed = ops.expand_dims(ops.cast(v_mask, "bool"), axis=-2)
        if use_causal_mask:
            tq, tv = ops.shape(scores)[-2], ops.shape(scores)[-1]
            rows = ops.expand_dims(ops.arange(tq), axis=-1)
            causal = ops.expand_dims(rows >= ops.arange(tv), axis=0)
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

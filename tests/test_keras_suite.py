"""Keras's own test suite for `keras.layers.Attention`, run on our layer.

The test file ships in the keras wheel; every `layers.Attention` in it is
replaced by the class under test. Tests of Keras's private helpers whose
names we share but whose internals differ are left out.
"""

from pathlib import Path

import keras
import pytest

from keras_attn import MultiHeadScaledDotAttention, ScaledDotAttention

SUITE = (
    Path(keras.__file__).parent / "src/layers/attention/attention_test.py"
)
# Reads `layer.scale` as Keras's learned variable; ours is the fixed scale.
PRIVATE = {"test_attention_calculate_scores_with_scale"}


@keras.saving.register_keras_serializable(package="keras_attn_tests")
class KerasScaledAttention(ScaledDotAttention):
    """`ScaledDotAttention` defaulting to `scale=1.0`: Keras's numbers."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(scale=scale, **kwargs)


def keras_suite(subject, pins_numbers=False):
    """Keras's `AttentionTest`, testing `subject` instead of Keras's layer."""
    namespace = {"__name__": f"keras_suite_{subject.__name__}"}
    source = SUITE.read_text().replace("layers.Attention", "SUBJECT")
    exec(compile(source, str(SUITE), "exec"), namespace)
    namespace["SUBJECT"] = subject
    suite = namespace["AttentionTest"]
    for name in PRIVATE:
        skip = pytest.mark.skip("private helper")
        setattr(suite, name, skip(getattr(suite, name)))
    if pins_numbers:
        # Pins the numbers of unscaled attention, which 1/sqrt(d_k) changes.
        xfail = pytest.mark.xfail(raises=AssertionError, strict=True)
        suite.test_attention_correctness = xfail(
            suite.test_attention_correctness
        )
    return suite


class TestKerasSuiteAtScaleOne(keras_suite(KerasScaledAttention)):
    pass


class TestKerasSuiteAtDefaultScale(
    keras_suite(ScaledDotAttention, pins_numbers=True)
):
    pass


MHA_SUITE = (
    Path(keras.__file__).parent
    / "src/layers/attention/multi_head_attention_test.py"
)


def keras_mha_suite():
    """Keras's `MultiHeadAttentionTest`, testing `MultiHeadScaledDotAttention`."""
    namespace = {"__name__": "keras_mha_suite"}
    source = MHA_SUITE.read_text().replace("layers.MultiHeadAttention", "SUBJECT")
    exec(compile(source, str(MHA_SUITE), "exec"), namespace)
    namespace["SUBJECT"] = MultiHeadScaledDotAttention
    return namespace["MultiHeadAttentionTest"]


class TestKerasMultiHeadSuite(keras_mha_suite()):
    pass

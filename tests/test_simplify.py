"""export.simplify: tf2onnx's own output for TensorFlow selects and gathers, rewritten,
must give the numbers of the graph as written (infinities, NaNs and negative indices
included), and TensorFlow's own."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.simplify import simplify, stable_names

tf = pytest.importorskip("tensorflow")
tf2onnx = pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

TABLE = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
SPECIAL = np.array([-np.inf, -2.5, -0.0, 0.0, 1.5, np.inf, np.nan], np.float32)


def _convert(function, specs):
    proto, _ = tf2onnx.convert.from_function(
        tf.function(function, input_signature=specs, autograph=False), input_signature=specs, opset=17
    )
    return proto


def _run(proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _ops(proto):
    return [node.op_type for node in proto.graph.node]


def _selects(x):
    return {
        "masked": tf.identity(tf.where(x > 0, x, 0.0), name="masked"),
        "zeroed": tf.identity(tf.where(x < 1, tf.zeros_like(x), x), name="zeroed"),
        "filled": tf.identity(tf.where(x > 0, x, tf.fill(tf.shape(x), -7.0)), name="filled"),
    }


def test_select_with_zero_keeps_one_product_and_tensorflows_values():
    specs = [tf.TensorSpec([None], tf.float32, name="x")]
    proto = _convert(_selects, specs)
    before = _run(proto, {"x": SPECIAL})
    counts = simplify(proto)
    onnx.checker.check_model(proto, full_check=True)
    after = _run(proto, {"x": SPECIAL})
    expected = {k: v.numpy() for k, v in _selects(tf.constant(SPECIAL)).items()}
    assert counts["nodes_after"] == len(_ops(proto)) < counts["nodes_before"]
    assert _ops(proto).count("Add") == 1  # only "filled" keeps tf2onnx's sum
    for name in expected:
        # The values of tf2onnx's graph, NaNs in the same places (tf2onnx's
        # product form makes inf * 0 a NaN where TensorFlow gives 0; the
        # rewrite keeps that as it is).
        np.testing.assert_array_equal(after[name], before[name])
        finite = np.isfinite(SPECIAL)
        np.testing.assert_array_equal(after[name][finite], expected[name][finite])


def test_select_with_a_nonzero_value_is_left_as_written():
    specs = [tf.TensorSpec([None], tf.float32, name="x")]
    proto = _convert(lambda x: {"filled": _selects(x)["filled"]}, specs)
    ops = _ops(proto)
    assert simplify(proto) == {"nodes_before": len(ops), "nodes_after": len(ops)}
    assert _ops(proto) == ops
    np.testing.assert_array_equal(
        _run(proto, {"x": SPECIAL[np.isfinite(SPECIAL)]})["filled"],
        np.where(SPECIAL[np.isfinite(SPECIAL)] > 0, SPECIAL[np.isfinite(SPECIAL)], -7.0),
    )


def _take(ids):
    # Keras's take on TensorFlow: negative indices wrapped with a select.
    return {"rows": tf.identity(keras.ops.take(tf.constant(TABLE), ids, axis=0), name="rows")}


def test_gather_drops_the_negative_index_select_and_still_wraps():
    specs = [tf.TensorSpec([None], tf.int32, name="ids")]
    proto = _convert(_take, specs)
    ids = np.array([-5, -1, 0, 2, 4], np.int32)
    before = _run(proto, {"ids": ids})["rows"]
    simplify(proto)
    onnx.checker.check_model(proto, full_check=True)
    (gather,) = [node for node in proto.graph.node if node.op_type == "Gather"]
    assert gather.input[1] == "ids"
    assert "Less" not in _ops(proto)
    after = _run(proto, {"ids": ids})["rows"]
    np.testing.assert_array_equal(after, TABLE[ids])
    np.testing.assert_array_equal(after, before)


def test_gather_with_a_shift_other_than_the_axis_size_is_kept():
    def shifted(ids):
        # Wraps by 3 although the table has 5 rows: not ONNX Gather's rule.
        index = tf.where(ids < 0, ids + 3, ids)
        return {"rows": tf.identity(tf.gather(tf.constant(TABLE), index), name="rows")}

    specs = [tf.TensorSpec([None], tf.int32, name="ids")]
    proto = _convert(shifted, specs)
    simplify(proto)
    (gather,) = [node for node in proto.graph.node if node.op_type == "Gather"]
    assert gather.input[1] != "ids"
    ids = np.array([-3, -1, 0, 4], np.int32)
    np.testing.assert_array_equal(_run(proto, {"ids": ids})["rows"], TABLE[np.where(ids < 0, ids + 3, ids)])


@pytest.mark.parametrize("activation", ["relu", "tanh", None])
def test_conv1d_bias_moves_into_the_conv(activation):
    inputs = keras.Input((None, 4), name="x")
    outputs = keras.layers.Conv1D(6, 3, padding="same", activation=activation)(inputs)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    specs = [tf.TensorSpec([None, None, 4], tf.float32, name="x")]
    proto = _convert(lambda x: {"y": tf.identity(model(x), name="y")}, specs)
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    before = _run(proto, {"x": x})["y"]
    simplify(proto)
    onnx.checker.check_model(proto, full_check=True)
    ops = _ops(proto)
    (conv,) = [node for node in proto.graph.node if node.op_type == "Conv"]
    assert len(conv.input) == 3 and "Add" not in ops
    if activation:
        # The activation reads the Conv directly, so onnxruntime can fuse it.
        assert ops[ops.index("Conv") + 1] == activation.capitalize()
    after = _run(proto, {"x": x})["y"]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    np.testing.assert_allclose(after, model(x).numpy(), rtol=0, atol=1e-5)


def test_stable_names_make_two_conversions_identical_and_keep_the_values():
    layer = keras.layers.GRU(4, return_sequences=True)  # a Loop with a body graph
    x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    layer(x)
    specs = [tf.TensorSpec([None, None, 2], tf.float32, name="x")]
    first, second = (_convert(lambda t: {"y": tf.identity(layer(t), name="y")}, specs) for _ in range(2))
    assert first.SerializeToString() != second.SerializeToString()  # tf2onnx's counters differ
    before = _run(first, {"x": x})["y"]
    stable_names(first)
    stable_names(second)
    onnx.checker.check_model(first, full_check=True)
    assert first.SerializeToString() == second.SerializeToString()
    np.testing.assert_array_equal(_run(first, {"x": x})["y"], before)
    np.testing.assert_allclose(before, layer(x).numpy(), rtol=0, atol=1e-5)

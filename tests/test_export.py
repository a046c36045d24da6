"""export.convert.convert (re-exported by export.to_onnx): structure, metadata, Keras parity,
atomic writes, int8 copy; export.validate.validate against a model that differs.

Each model is converted once (module-scoped cache); Hypothesis then compares
onnxruntime with Keras on random padded token batches.
"""

import logging
import warnings

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import export.convert
from export.errors import ExportError, ExtraInputError, ParityError, UnbuiltModelError, UnsupportedLayerError
from export.runtime import METADATA_ENCODER_KEY, SentimentPredictor
from export.signature import ModelSignature
from export.text import TextEncoder
from export.to_onnx import ExportReport, convert, load_keras
from export.validate import sample_inputs, validate
from keras_attn.saving import read_encoder
from test_export_support import (
    CONFIGS,
    SEQ_LEN,
    VOCAB,
    attention_model,
    keras_outputs,
    padded_ids,
    run_module,
    run_script,
    sentiment,
    two_input_model,
)

ATOL = 1e-5
PARITY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Converted:
    def __init__(self, model, path, report):
        self.model = model
        self.path = path
        self.report = report
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.proto = onnx.load(str(path))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = {}
    folder = tmp_path_factory.mktemp("onnx")

    def get(name):
        if name not in cache:
            if name == "two_inputs":
                model = two_input_model()
            elif name in ("sentiment", "lstm"):
                options = {"encoder": "lstm"} if name == "lstm" else {}
                path, model, _ = sentiment(folder, name=f"{name}.keras", **options)
                model = load_keras(path)
            else:
                model = attention_model(name)
            path = folder / f"{name}.onnx"
            cache[name] = Converted(model, path, convert(model, path))
        return cache[name]

    return get


def _check_parity(conv, feeds):
    names = [o.name for o in conv.session.get_outputs()]
    got = dict(zip(names, conv.session.run(None, feeds)))
    inputs = [feeds[t.name] for t in conv.model.inputs]
    expected = keras_outputs(conv.model, inputs, list(conv.model.output_names))
    assert sorted(got) == sorted(expected)
    for name in names:
        assert got[name].shape == expected[name].shape, name
        np.testing.assert_allclose(got[name], expected[name], atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("config", CONFIGS)
@PARITY
@given(n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), length=st.integers(1, 12))
def test_parity_with_keras_on_padded_batches(converted, config, n, seed, length):
    conv = converted(config)
    if config != "variable_length":
        length = SEQ_LEN
    ids = padded_ids(np.random.default_rng(seed), n, length)
    _check_parity(conv, {"tokens": ids})


@PARITY
@given(n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_parity_two_inputs_list_outputs(converted, n, seed):
    conv = converted("two_inputs")
    rng = np.random.default_rng(seed)
    _check_parity(conv, {"queries": padded_ids(rng, n, 5), "values": padded_ids(rng, n, 9)})


@PARITY
@given(n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_parity_sentiment_model(converted, n, seed):
    conv = converted("sentiment")
    _check_parity(conv, {"tokens": padded_ids(np.random.default_rng(seed), n, SEQ_LEN, conv.model.text_encoder.vocab_size)})


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_parity_lstm_sentiment_model(converted, n, seed):
    conv = converted("lstm")
    _check_parity(conv, {"tokens": padded_ids(np.random.default_rng(seed), n, SEQ_LEN, conv.model.text_encoder.vocab_size)})


def test_random_verification_inputs_are_valid_and_padded():
    signature = ModelSignature.from_keras(two_input_model())
    feeds, kind = sample_inputs(signature, seed=0)
    assert "random" in kind
    for name, length in (("queries", 5), ("values", 9)):
        ids = feeds[name]
        assert ids.dtype == np.int32 and ids.shape == (16, length)
        assert 0 <= ids.min() and ids.max() < VOCAB  # inside the Embedding
        assert (ids == 0).all(axis=1).any() and (ids != 0).all(axis=1).any()
        # Padding only at the end of each row.
        assert all(np.all(np.diff((row != 0).astype(int)) <= 0) for row in ids)


def test_graph_is_valid_named_and_ordered(converted):
    conv = converted("sentiment")
    onnx.checker.check_model(conv.proto, full_check=True)
    graph = conv.proto.graph
    assert [i.name for i in graph.input] == ["tokens"]
    dims = graph.input[0].type.tensor_type.shape.dim
    # Max pooling takes any length: the runtime skips padding with it.
    assert (dims[0].dim_param, dims[1].dim_param) == ("batch", "sequence")
    assert [o.name for o in graph.output] == list(conv.model.output_names) == ["attention", "probability"]
    for output in graph.output:
        assert output.type.tensor_type.shape.dim[0].dim_param == "batch"
    attention = graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in attention] == ["batch", "sequence", "sequence"]
    assert conv.proto.opset_import[0].version == 17


def test_sentiment_graph_is_simplified(converted):
    # Parity of the simplified graph is what the tests above check.
    conv = converted("sentiment")
    ops = [node.op_type for node in conv.proto.graph.node]
    assert conv.report.nodes["nodes_after"] == len(ops) < conv.report.nodes["nodes_before"]
    (gather,) = [node for node in conv.proto.graph.node if node.op_type == "Gather"]
    assert gather.input[1] == "tokens"  # no negative-index select in front
    assert "Less" not in ops
    assert f"{len(ops)} nodes (tf2onnx wrote {conv.report.nodes['nodes_before']})" in str(conv.report)


def test_dynamic_sequence_axis_is_named(converted):
    dims = converted("variable_length").proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]


def test_several_inputs_and_outputs_keep_model_order(converted):
    conv = converted("two_inputs")
    assert [i.name for i in conv.session.get_inputs()] == ["queries", "values"]
    assert [o.name for o in conv.session.get_outputs()] == list(conv.model.output_names)
    assert conv.session.get_outputs()[0].shape == ["batch", 3]


def test_report_holds_parity_per_output(converted):
    conv = converted("sentiment")
    report = conv.report
    assert isinstance(report, ExportReport)
    assert report.verified and report.has_encoder
    assert set(report.parity) == {"attention", "probability"}
    assert all(0 <= diff <= 1e-4 for diff in report.parity.values())
    assert [t.name for t in report.outputs] == ["attention", "probability"]
    text = str(report)
    assert "probability" in text and "parity" in text and "opset 17" in text


def test_metadata_round_trip_rebuilds_the_models_encoder(converted, tmp_path):
    conv = converted("sentiment")
    meta = conv.session.get_modelmeta()
    assert meta.producer_name == "keras-attn"
    props = meta.custom_metadata_map
    for key in ("keras_version", "tensorflow_version", "tf2onnx_version", "keras_attn_version", "opset"):
        assert props[key], key
    assert props["opset"] == "17"
    rebuilt = TextEncoder.from_json(props[METADATA_ENCODER_KEY])
    assert rebuilt == conv.model.text_encoder
    assert SentimentPredictor(conv.path).encoder == conv.model.text_encoder
    # And the encoder is the one inside the .keras file, independently read.
    path, _, encoder = sentiment(tmp_path, name="again.keras")
    assert read_encoder(path) == encoder == rebuilt


def test_model_without_encoder_has_no_encoder_metadata(converted):
    props = converted("scale_none").session.get_modelmeta().custom_metadata_map
    assert METADATA_ENCODER_KEY not in props
    assert props["keras_attn_version"]


def test_convert_from_path_and_other_opset(tmp_path):
    path, model, encoder = sentiment(tmp_path)
    report = convert(path, tmp_path / "out.onnx", opset=13)
    assert report.opset == 13 and report.has_encoder
    assert onnx.load(str(tmp_path / "out.onnx")).opset_import[0].version == 13


def test_rejects_unsupported_opset_before_writing(tmp_path):
    with pytest.raises(ExportError, match="opset"):
        convert(attention_model("scale_none"), tmp_path / "x.onnx", opset=19)
    assert list(tmp_path.iterdir()) == []


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _other_weights(model):
    """The same architecture with every weight moved a little: a model the file does not come from."""
    other = keras.models.clone_model(model)
    other.set_weights([w + 0.05 for w in model.get_weights()])
    return other


def test_validate_catches_a_model_that_differs(converted):
    conv = converted("scale_none")
    report = validate(conv.model, conv.path)
    assert set(report.parity) == {"attention", "probability"} and max(report.parity.values()) < 1e-5
    with pytest.raises(ParityError, match="disagrees") as caught:
        validate(_other_weights(conv.model), conv.path)
    assert max(caught.value.parity.values()) > 1e-3


def test_verification_failure_leaves_existing_file_byte_identical(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    before = _listing(tmp_path)
    model = attention_model("scale_none")
    other = _other_weights(model)
    # The check compares the file with a model it does not come from.
    monkeypatch.setattr(export.convert, "validate", lambda m, path, **kw: validate(other, path, **kw))
    with pytest.raises(ParityError, match="nothing was written"):
        convert(model, target, quantize=True)
    assert target.read_bytes() == b"previous export"
    assert _listing(tmp_path) == before  # no temp file, no int8 copy


def test_write_failure_is_an_export_error_and_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def disk_full(proto, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", disk_full)
    with pytest.raises(ExportError, match="cannot write .*No space left"):
        convert(attention_model("scale_none"), target)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["model.onnx"]


def test_unwritable_output_folder(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        convert(attention_model("scale_none"), tmp_path / "missing" / "m.onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        convert(attention_model("scale_none"), tmp_path / "file" / "m.onnx")


def test_missing_and_bad_model_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "nope.keras", tmp_path / "m.onnx")
    (tmp_path / "text.keras").write_text("not a model")
    with pytest.raises(ExportError, match="not a Keras model"):
        convert(tmp_path / "text.keras", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_quantize_writes_int8_copy_beside(tmp_path):
    path, _, _ = sentiment(tmp_path)
    report = convert(path, tmp_path / "sentiment.onnx", quantize=True)
    q = report.quantization
    assert q.path == tmp_path / "sentiment.int8.onnx" and q.path.is_file()
    assert q.compared_output == "probability"
    assert 0.0 <= q.label_agreement <= 1.0 and q.max_abs_diff < 0.1
    assert q.fp32_ms > 0 and q.int8_ms > 0
    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert "MatMulInteger" in ops
    # The int8 copy is self-contained too.
    assert SentimentPredictor(q.path).predict_proba(["great fun"]).shape == (1,)
    assert "int8 copy" in str(report)


def test_vocabulary_larger_than_embedding_is_refused(tmp_path):
    _, model, _ = sentiment(tmp_path)
    too_big = TextEncoder([f"w{i}" for i in range(VOCAB + 100)], seq_len=SEQ_LEN)
    with pytest.raises(ExportError, match="Embedding"):
        convert(model, tmp_path / "m.onnx", encoder=too_big)
    assert not (tmp_path / "m.onnx").exists()


@keras.saving.register_keras_serializable(package="tests")
class PositionIds(keras.layers.Layer):
    """0, 1, 2... for each token: ids made from the input's shape only."""

    def call(self, tokens):
        return keras.ops.broadcast_to(keras.ops.arange(keras.ops.shape(tokens)[1], dtype="int32"), keras.ops.shape(tokens))


@pytest.mark.parametrize("positions", ["cumsum of ones_like", "custom layer"])
def test_learned_positions_do_not_limit_the_token_ids(positions, tmp_path):
    # A position table of SEQ_LEN rows beside a token table of VOCAB: only the
    # token table bounds the encoder's ids.
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    if positions == "custom layer":
        ids = PositionIds()(tokens)
    else:
        ids = keras.ops.cumsum(keras.ops.ones_like(tokens), axis=1) - 1
    x = keras.layers.Embedding(VOCAB, 8)(keras.ops.cast(tokens, "int64")) + keras.layers.Embedding(SEQ_LEN, 8)(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(tokens, keras.layers.Dense(1, activation="sigmoid", name="probability")(pooled))
    encoder = TextEncoder([f"w{i}" for i in range(VOCAB - 2)], seq_len=SEQ_LEN)
    assert encoder.vocab_size > SEQ_LEN
    signature = ModelSignature.from_keras(model, encoder=encoder)
    assert signature.id_limits == {"tokens": VOCAB}
    report = convert(model, tmp_path / "m.onnx", encoder=encoder)
    assert max(report.parity.values()) < 1e-5
    # ...and a vocabulary past the token table is still refused.
    too_big = TextEncoder([f"w{i}" for i in range(VOCAB)], seq_len=SEQ_LEN)
    with pytest.raises(ExportError, match=f"takes only {VOCAB}"):
        ModelSignature.from_keras(model, encoder=too_big)


# -- the model kinds tf2onnx 1.17 gets wrong, and how each is handled ---------


def _ops(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_gelu_converts_through_erf(tmp_path):
    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="gelu")(x)  # exact gelu: TensorFlow's Erfc
    model = keras.Model(x, keras.layers.Dense(2)(keras.ops.gelu(h)), name="gelu")
    report = convert(model, tmp_path / "gelu.onnx")
    assert "Erf" in _ops(tmp_path / "gelu.onnx") and "Erfc" not in _ops(tmp_path / "gelu.onnx")
    assert max(report.parity.values()) < 1e-5
    # Far in both tails too, where 1 - Erf could lose what Erfc keeps.
    session = ort.InferenceSession(str(tmp_path / "gelu.onnx"), providers=["CPUExecutionProvider"])
    wide = np.linspace(-12, 12, 6 * 40, dtype=np.float32).reshape(40, 6)
    np.testing.assert_allclose(session.run(None, {"x": wide})[0], model(wide).numpy(), rtol=0, atol=1e-4)


def test_adapted_normalization_is_frozen_so_the_inputs_are_the_models(tmp_path):
    x = keras.Input((4,), name="features")
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).normal(5.0, 3.0, (100, 4)).astype("float32"))
    model = keras.Model(x, keras.layers.Dense(1)(norm(x)))
    convert(model, tmp_path / "norm.onnx")
    session = ort.InferenceSession(str(tmp_path / "norm.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    rows = np.random.default_rng(1).normal(5.0, 3.0, (9, 4)).astype("float32")
    np.testing.assert_allclose(session.run(None, {"features": rows})[0], model(rows).numpy(), rtol=0, atol=1e-5)


def test_a_graph_input_the_model_lacks_is_an_extra_input_error(tmp_path):
    from onnx import TensorProto, helper

    x = keras.Input((3,), name="x")
    model = keras.Model(x, x - 1.0)
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "mean"], ["y"])],
        "leaky",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("x", "mean")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "leaky.onnx")
    with pytest.raises(ExtraInputError, match="mean"):
        validate(model, tmp_path / "leaky.onnx")


def test_time_distributed_over_a_variable_axis_needs_no_loop(tmp_path):
    frames = keras.Input((None, 5), name="frames")
    model = keras.Model(frames, keras.layers.TimeDistributed(keras.layers.Dense(3, activation="tanh"))(frames))
    convert(model, tmp_path / "td.onnx")
    assert "Loop" not in _ops(tmp_path / "td.onnx")
    report = validate(model, tmp_path / "td.onnx", batch_sizes=(1, 4), lengths=(1, 33))
    assert report.runs == [(1, 1), (4, 1), (1, 33), (4, 33)] and max(report.parity.values()) < 1e-5


@keras.saving.register_keras_serializable(package="keras_attn_export_tests")
class MeanClassifier(keras.Model):
    """A subclassed model: its own call(), no functional graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(VOCAB, 8)
        self.score = keras.layers.Dense(2, activation="softmax")

    def call(self, tokens):
        return self.score(keras.ops.mean(self.embedding(tokens), axis=1))


def test_subclassed_model_converts_once_called(tmp_path):
    model = MeanClassifier()
    with pytest.raises(UnbuiltModelError, match="call it once"):
        convert(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    ids = padded_ids(np.random.default_rng(0), 5, SEQ_LEN)
    expected = model(ids).numpy()
    report = convert(model, tmp_path / "m.onnx")
    assert [str(t) for t in report.inputs] == [f"inputs int32 (batch, {SEQ_LEN})"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"inputs": ids})[0], expected, rtol=0, atol=1e-6)


def test_lookup_layers_become_label_encoders_with_parity_on_known_and_unknown_keys(tmp_path):
    words = keras.Input((3,), dtype="string", name="words")
    codes = keras.Input((2,), dtype="int64", name="codes")
    word_ids = keras.layers.StringLookup(vocabulary=["good", "bad", "film"])(words)
    code_ids = keras.layers.IntegerLookup(vocabulary=[7, 70, 700])(codes)
    model = keras.Model([words, codes], {"words": word_ids, "codes": code_ids})
    convert(model, tmp_path / "lookup.onnx")
    assert {n.op_type for n in onnx.load(str(tmp_path / "lookup.onnx")).graph.node} == {"LabelEncoder"}
    feeds = {
        "words": np.array([["good", "film", "awful"], ["", "bad", "Good"]], dtype=object),
        "codes": np.array([[7, 700], [8, -1]], dtype=np.int64),
    }
    session = ort.InferenceSession(str(tmp_path / "lookup.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert sorted(got) == ["codes_output", "words_output"]  # ONNX has one namespace for inputs and outputs
    got = {name.removesuffix("_output"): value for name, value in got.items()}
    # Index 0 is the one out-of-vocabulary index; the vocabulary follows in order.
    np.testing.assert_array_equal(got["words"], [[1, 3, 0], [0, 2, 0]])
    np.testing.assert_array_equal(got["codes"], [[1, 3], [0, 0]])


@pytest.mark.parametrize("layer", ["StringLookup", "TextVectorization"])
def test_lookups_that_cannot_convert_are_refused_naming_the_layer(tmp_path, layer):
    words = keras.Input((2,) if layer == "StringLookup" else (1,), dtype="string", name="words")
    if layer == "StringLookup":  # hashed out-of-vocabulary buckets
        ids = keras.layers.StringLookup(vocabulary=["good", "bad"], num_oov_indices=2, name="vocab")(words)
    else:
        ids = keras.layers.TextVectorization(vocabulary=["good", "bad"], output_sequence_length=4, name="vocab")(words)
    model = keras.Model(words, ids)
    with pytest.raises(UnsupportedLayerError, match=f"'vocab' \\({layer}\\)") as caught:
        convert(model, tmp_path / "m.onnx")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_the_same_model_exported_twice_gives_the_same_bytes(tmp_path):
    model = attention_model("causal")
    convert(model, tmp_path / "a.onnx")
    convert(model, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_signature_is_known_before_conversion():
    signature = ModelSignature.from_keras(two_input_model())
    assert [str(t) for t in signature.inputs] == ["queries int32 (batch, 5)", "values int32 (batch, 9)"]
    assert [str(t) for t in signature.outputs] == ["classes float32 (batch, 3)", "cross float32 (batch, 5, 9)"]
    variable = ModelSignature.from_keras(attention_model("variable_length"))
    assert [str(t) for t in variable.outputs] == [
        "attention float32 (batch, sequence, sequence)",
        "probability float32 (batch, 1)",
    ]


def test_validate_command_prints_the_report(converted, tmp_path, capsys):
    from export.validate import main

    conv = converted("sentiment")
    keras_path, _, _ = sentiment(tmp_path)
    with warnings.catch_warnings():  # the command silences warnings and logs for its process
        assert main([str(keras_path), str(conv.path), "--batch-sizes", "1,3"]) == 0
    logging.disable(logging.NOTSET)
    out = capsys.readouterr().out
    assert "parity with Keras on encoded sample sentences" in out and "probability" in out


# -- command lines in other processes ---------------------------------------


@pytest.mark.slow
def test_cli_exports_whatever_keras_backend_the_user_has(tmp_path):
    path, _, _ = sentiment(tmp_path, name="dev.keras")
    for backend in ("jax", "torch"):
        # Neither needs to be installed: the exporter loads the file with TensorFlow.
        proc = run_module("export.to_onnx", path, "-o", f"{backend}.onnx", cwd=tmp_path, env={"KERAS_BACKEND": backend})
        assert proc.returncode == 0, proc.stderr
        assert "max |diff|" in proc.stdout and proc.stderr == ""


JAX_MODEL = """
import numpy as np, keras
assert keras.backend.backend() == "jax"
keras.utils.set_random_seed(0)
tokens = keras.Input((None,), dtype="int32", name="tokens")
x = keras.layers.Embedding(30, 16, mask_zero=True)(tokens)
a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
x = keras.layers.LayerNormalization()(x + a)
x = keras.layers.Dense(16, activation="gelu")(x)
x = keras.layers.GlobalAveragePooling1D()(x)
model = keras.Model(tokens, keras.layers.Dense(3, activation="softmax", name="classes")(x))
model.save("jax.keras")
ids = np.random.default_rng(0).integers(1, 30, (6, 11)).astype("int32")
ids[0, 4:] = 0
np.savez("jax_outputs.npz", ids=ids, classes=np.asarray(model.predict(ids, verbose=0)))
"""


@pytest.mark.slow
def test_a_model_saved_under_jax_exports_and_matches_jax(tmp_path):
    pytest.importorskip("jax")
    (tmp_path / "make.py").write_text(JAX_MODEL)
    proc = run_script(tmp_path / "make.py", cwd=tmp_path, env={"KERAS_BACKEND": "jax"})
    assert proc.returncode == 0, proc.stderr
    convert(tmp_path / "jax.keras", tmp_path / "jax.onnx")
    saved = np.load(tmp_path / "jax_outputs.npz")
    session = ort.InferenceSession(str(tmp_path / "jax.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"tokens": saved["ids"]})[0], saved["classes"], rtol=0, atol=1e-5)


MULTI_HEAD_MODEL = """
import sys
import numpy as np, keras
from keras import layers, ops
from keras_attn import MultiHeadScaledDotAttention
assert keras.backend.backend() == sys.argv[1]
keras.utils.set_random_seed(0)
tokens = keras.Input((None,), dtype="int32", name="tokens")
padding = ops.not_equal(tokens, 0)
x = layers.Embedding(30, 16)(tokens) + layers.Embedding(16, 16)(ops.cumsum(ops.ones_like(tokens), axis=1) - 1)
mask = ops.logical_and(ops.expand_dims(padding, 1), ops.expand_dims(padding, 2))
for _ in range(2):
    h = layers.LayerNormalization()(x)
    x = x + MultiHeadScaledDotAttention(num_heads=4, key_dim=4, value_dim=3, dropout=0.2)(h, h, attention_mask=mask)
context, heads = MultiHeadScaledDotAttention(num_heads=2, key_dim=8)(x, x, attention_mask=mask, return_attention_scores=True)
model = keras.Model(tokens, {"context": context, "heads": heads})
model.save("multi_head.keras")
rng = np.random.default_rng(0)
outputs = {}
for batch in (1, 5):
    for length in (6, 13):
        ids = rng.integers(1, 30, (batch, length)).astype("int32")
        ids[-1, length // 2:] = 0   # padding
        if batch > 1:
            ids[0] = 0   # an all-padding row: every query fully masked
        for name, value in model.predict(ids, verbose=0).items():
            outputs[f"{batch}x{length}/{name}"] = np.asarray(value)
        outputs[f"{batch}x{length}/ids"] = ids
np.savez("multi_head_outputs.npz", **outputs)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_multi_head_model_saved_under_each_backend_exports_with_parity(backend, tmp_path):
    # JAX and torch run the layer's fused kernel, TensorFlow (and so the
    # exported file) the plain path: the one rule for fully masked queries
    # (zero weights, zero attention output) must hold across both.
    if backend != "tensorflow":
        pytest.importorskip(backend)
    (tmp_path / "make.py").write_text(MULTI_HEAD_MODEL)
    proc = run_script(tmp_path / "make.py", backend, cwd=tmp_path, env={"KERAS_BACKEND": backend})
    assert proc.returncode == 0, proc.stderr
    report = convert(tmp_path / "multi_head.keras", tmp_path / "multi_head.onnx")
    assert max(report.parity.values()) < 1e-5
    saved = np.load(tmp_path / "multi_head_outputs.npz")
    session = ort.InferenceSession(str(tmp_path / "multi_head.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for shape in ("1x6", "1x13", "5x6", "5x13"):
        got = dict(zip(names, session.run(None, {"tokens": saved[f"{shape}/ids"]})))
        for name in ("context", "heads"):
            np.testing.assert_allclose(got[name], saved[f"{shape}/{name}"], rtol=0, atol=1e-5, err_msg=f"{shape} {name}")
        if shape.startswith("5"):
            assert not got["heads"][0].any()  # the all-padding row: zero weights
    assert "Einsum" not in _ops(tmp_path / "multi_head.onnx")


SUBCLASSED_MODULE = """
import keras

@keras.saving.register_keras_serializable(package="user_code")
class Averager(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(20, 4)
        self.out = keras.layers.Dense(1, activation="sigmoid")

    def call(self, tokens):
        return self.out(keras.ops.mean(self.embedding(tokens), axis=1))
"""


@pytest.mark.slow
def test_cli_converts_a_subclassed_model_with_import(tmp_path):
    (tmp_path / "user_layers.py").write_text(SUBCLASSED_MODULE)
    (tmp_path / "make.py").write_text(
        "import numpy as np, user_layers\nm = user_layers.Averager()\nm(np.ones((2, 6), 'int32'))\nm.save('sub.keras')\n"
    )
    assert run_script(tmp_path / "make.py", cwd=tmp_path).returncode == 0
    proc = run_module("export.to_onnx", "sub.keras", cwd=tmp_path)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1
    assert "Averager" in proc.stderr and "--import" in proc.stderr
    proc = run_module("export.to_onnx", "sub.keras", "--import", "user_layers", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "input   inputs int32 (batch, 6)" in proc.stdout and "max |diff|" in proc.stdout


@pytest.mark.slow
def test_onnxruntime_logs_nothing_before_our_error_line(tmp_path):
    from onnx import TensorProto, helper

    x = keras.Input((3,), name="x")
    keras.Model(x, x * 2.0).save(tmp_path / "m.keras")
    # Valid for onnx.checker, fails at run time: 3 values cannot be 2 x something.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, -1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "bad.onnx")
    proc = run_module("export.validate", "m.keras", "bad.onnx", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: onnxruntime cannot run") and proc.stderr.count("\n") == 1, proc.stderr

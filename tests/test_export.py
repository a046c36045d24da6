"""export.convert.convert (re-exported by export.to_onnx): structure, metadata, Keras parity,
atomic writes, int8 copy; export.validate.validate against a model that differs.

Each model is converted once (module-scoped cache); Hypothesis then compares
onnxruntime with Keras on random padded token batches.
"""


import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import export.convert
from export.errors import ExportError, ParityError
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

"""export.to_triton: a model repository that Triton's own config schema accepts."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from serve_models import pair, sentiment  # noqa: F401 - fixtures

from export.to_triton import main, model_config, write_repository
from test_export_support import ROOT as REPO

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
DataType = model_config_pb2.DataType


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_repository_layout_and_byte_copy(sentiment, tmp_path):
    folder = write_repository(sentiment, tmp_path / "models")
    assert folder == tmp_path / "models" / "sentiment"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    assert (folder / "1" / "model.onnx").read_bytes() == sentiment.read_bytes()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_text_model_config(sentiment, tmp_path):
    import onnx

    config = parse((write_repository(sentiment, tmp_path) / "config.pbtxt").read_text())
    assert config.name == "sentiment"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    graph = onnx.load(sentiment).graph
    # The reference: the graph's own value infos, read with onnx.
    assert [i.name for i in config.input] == [i.name for i in graph.input if i.name not in {x.name for x in graph.initializer}]
    assert [o.name for o in config.output] == [o.name for o in graph.output]

    def dims(value_info):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim][1:]

    by_name = {v.name: v for v in [*graph.input, *graph.output]}
    for tensor in [*config.input, *config.output]:
        assert list(tensor.dims) == dims(by_name[tensor.name]), tensor.name
    assert config.input[0].data_type == DataType.TYPE_INT32
    assert {o.name: o.data_type for o in config.output} == {
        "probability": DataType.TYPE_FP32,
        "attention": DataType.TYPE_FP32,
    }
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 64, 256]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert len(config.instance_group) == 1
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 1
    assert config.parameters["intra_op_thread_count"].string_value == "0"
    assert config.parameters["inter_op_thread_count"].string_value == "1"


def test_two_input_model_and_options(pair, tmp_path):
    text = model_config(pair, name="pair-v2", max_batch_size=8, queue_delay_us=500, instances=2, threads=3)
    config = parse(text)
    assert config.name == "pair-v2"
    assert config.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("a", DataType.TYPE_FP32, [3]),
        ("b", DataType.TYPE_FP32, [2]),
    ]
    assert sorted((o.name, list(o.dims)) for o in config.output) == [("gate", [1]), ("score", [2])]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    assert config.parameters["intra_op_thread_count"].string_value == "3"


def test_cli_writes_under_name_and_replaces_an_old_copy(pair, tmp_path, capsys):
    stale = tmp_path / "repo" / "other" / "1"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"old")
    assert main([str(pair), "-o", str(tmp_path / "repo"), "--name", "other", "--max-batch-size", "32"]) == 0
    assert "config.pbtxt" in capsys.readouterr().out
    folder = tmp_path / "repo" / "other"
    assert (folder / "1" / "model.onnx").read_bytes() == pair.read_bytes()
    assert parse((folder / "config.pbtxt").read_text()).max_batch_size == 32


@pytest.mark.parametrize("content", [b"not an onnx file\n", b""])
def test_non_onnx_file_is_refused_without_a_repository(tmp_path, capsys, content):
    from export.cli import run

    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(content)
    repository = tmp_path / "repo"
    assert run(main, [str(bogus), "-o", str(repository)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "not a usable ONNX model" in err
    assert not repository.exists()


def test_missing_file_and_bad_name(pair, tmp_path, capsys):
    from export.cli import run

    assert run(main, [str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "repo")]) == 1
    assert "no such ONNX file" in capsys.readouterr().err
    assert run(main, [str(pair), "-o", str(tmp_path / "repo"), "--name", "../escape"]) == 1
    assert "model name" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


# -- the text ensemble (--text) ---------------------------------------------------------


class _StandIn:
    """A stand-in for Triton's ``triton_python_backend_utils``: what our model.py files call, as Triton defines it.

    (``triton-python-backend-mock-utils`` 1.0.0 on the registry pins numpy < 2; installed without its
    dependencies, our model.py files ran under it too, on 2026-12-03.)
    """

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self._output_tensors, self._error = list(output_tensors), error

        def output_tensors(self):
            return self._output_tensors

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class TritonError(Exception):
        pass

    class InferenceRequest:
        def __init__(self, inputs):
            self._inputs = inputs

        def inputs(self):
            return self._inputs

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs() if t.name() == name), None)

    @staticmethod
    def get_output_config_by_name(model_config, name):
        return next((o for o in model_config["output"] if o["name"] == name), None)

    @staticmethod
    def triton_string_to_numpy(data_type):
        import numpy as np

        return {"TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}[data_type]


def _python_model(folder, monkeypatch):
    """``folder/1/model.py`` loaded and initialised as Triton's Python backend does, under the stand-in."""
    import importlib.util
    import json
    import sys

    from google.protobuf import json_format

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _StandIn)
    monkeypatch.delitem(sys.modules, "text", raising=False)  # each model imports its own copy
    spec = importlib.util.spec_from_file_location(f"triton_{folder.name}", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(parse((folder / "config.pbtxt").read_text()), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(folder), "model_version": "1"})
    return model


def _execute(model, **inputs):
    (response,) = model.execute([_StandIn.InferenceRequest([_StandIn.Tensor(k, v) for k, v in inputs.items()])])
    assert not response.has_error(), response.error()
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def test_text_ensemble_configs_parse_and_its_maps_join_up(sentiment, tmp_path):
    from export.to_triton import write_text_ensemble

    folders = write_text_ensemble(sentiment, tmp_path)
    assert [f.name for f in folders] == ["sentiment", "sentiment_encode", "sentiment_ids", "sentiment_decode"]
    configs = {f.name: parse((f / "config.pbtxt").read_text()) for f in folders}
    ensemble = configs["sentiment"]
    assert ensemble.platform == "ensemble" and [i.name for i in ensemble.input] == ["text"]
    assert ensemble.input[0].data_type == DataType.TYPE_STRING
    # Tensors known so far: the ensemble's inputs, then each step's outputs, with their types and dims.
    known = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        ins = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        outs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        assert set(step.input_map) == set(ins), step.model_name
        for key, value in step.input_map.items():
            assert known[value] == ins[key], (step.model_name, key)
        for key, value in step.output_map.items():
            known[value] = outs[key]
    for output in ensemble.output:
        assert known[output.name] == (output.data_type, list(output.dims)), output.name
    assert [o.name for o in ensemble.output][-1] == "label" and ensemble.output[-1].data_type == DataType.TYPE_STRING
    for step in ("sentiment_encode", "sentiment_decode"):
        assert configs[step].backend == "python"
        copy = tmp_path / step / "1" / "text.py"
        assert copy.read_bytes() == (REPO / "export" / "text.py").read_bytes()  # the one definition, carried


def test_text_ensemble_stepped_in_order_gives_textclassifiers_answers(sentiment, tmp_path, monkeypatch):
    import numpy as np
    import onnxruntime

    from export.runtime import TextClassifier
    from export.to_triton import write_text_ensemble

    write_text_ensemble(sentiment, tmp_path)
    texts = ["What a wonderful film", "The battery died after a week, terrible", "", "日本語 🙂 ok", "good " * 80]
    encode = _python_model(tmp_path / "sentiment_encode", monkeypatch)
    decode = _python_model(tmp_path / "sentiment_decode", monkeypatch)
    ids = _execute(encode, text=np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1))["ids"]
    session = onnxruntime.InferenceSession(str(tmp_path / "sentiment_ids" / "1" / "model.onnx"))  # as Triton's backend
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: ids})))
    label = _execute(decode, probability=outputs["probability"])["label"]
    classifier = TextClassifier(sentiment)
    assert label.shape == (len(texts), 1)
    assert [v.decode() for v in label.ravel()] == [p.label for p in classifier.predict(texts)]
    np.testing.assert_allclose(classifier.label_scores(outputs["probability"]), classifier.predict_proba(texts), rtol=0, atol=1e-6)


def test_text_ensemble_refuses_a_model_without_an_encoder(pair, tmp_path, capsys):
    from export.cli import run

    assert run(main, [str(pair), "-o", str(tmp_path / "repo"), "--text"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --text needs a text model of ours: ") and err.count("\n") == 1
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())

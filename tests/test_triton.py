"""export.to_triton: a model repository that Triton's own config schema accepts."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from serve_models import pair, sentiment  # noqa: F401 - fixtures

from export.to_triton import main, model_config, write_repository

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

"""Every architecture of benchmarks/zoo.py converts and agrees with Keras on onnxruntime.

Each model (random weights, built here) is converted by `export.convert.convert`
and checked by `export.validate.validate` at two batch sizes and, where an axis
is variable, two lengths (other than the ones conversion checked). Layers the
exporter refuses must be refused with the documented error naming them, and
leave no file. Marked slow: about a minute and a half on 2 cores.
"""

import onnx
import pytest

from benchmarks.zoo import ARCHITECTURES
from export.convert import convert
from export.errors import UnsupportedLayerError
from export.session import open_session
from export.validate import validate

pytestmark = pytest.mark.slow


def test_the_zoo_is_large_enough():
    assert len([a for a in ARCHITECTURES if a.refused is None]) >= 20


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: a.name)
def test_architecture_converts_with_parity(architecture, tmp_path):
    model = architecture.build()
    path = tmp_path / f"{architecture.name}.onnx"
    if architecture.refused:
        with pytest.raises(UnsupportedLayerError, match=architecture.refused):
            convert(model, path)
        assert list(tmp_path.iterdir()) == []
        return
    convert(model, path, verify=False)
    # The file runs on the model's inputs alone: as many as Keras has, no constant left as an input.
    keras_inputs = len(model.inputs) if getattr(model, "inputs", None) else 1
    assert len(open_session(path).get_inputs()) == keras_inputs
    graph = onnx.load(str(path)).graph
    assert not any(node.op_type == "Erfc" for node in graph.node)
    report = validate(model, path, batch_sizes=(2, 7), lengths=(3, 9), atol=1e-4)
    assert set(report.parity) == {o.name for o in graph.output}
    variable = any(d is None for t in getattr(model, "inputs", None) or [] for d in t.shape[1:])
    assert report.runs == ([(2, 3), (7, 3), (2, 9), (7, 9)] if variable else [(2, None), (7, None)])


def test_a_model_with_loops_gives_the_same_bytes_twice(tmp_path):
    (architecture,) = [a for a in ARCHITECTURES if a.name == "lstm_stack_mask_zero"]
    model = architecture.build()
    convert(model, tmp_path / "a.onnx")
    convert(model, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

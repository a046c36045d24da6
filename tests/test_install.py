"""The serving install (`pip install .`, no TensorFlow or Keras) says what to install."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs the rest of the program as if the training stack were not installed:
# a None entry in sys.modules makes `import keras` raise ModuleNotFoundError.
WITHOUT = "import sys\nfor name in ('keras', 'tensorflow', 'tf2onnx'):\n    sys.modules[name] = None\n"


def _python(code, *args):
    return subprocess.run([sys.executable, "-c", WITHOUT + code, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_import_keras_attn_names_the_train_extra():
    done = _python("import keras_attn")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and 'pip install "keras-attn[train]"' in last


@pytest.mark.slow
def test_export_cli_prints_one_line_naming_the_train_extra(tmp_path):
    done = _python("import runpy; runpy.run_module('export.to_onnx', run_name='__main__')",
                   "-o", str(tmp_path / "out.onnx"))
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert re.fullmatch(r'error: (keras|tensorflow|tf2onnx) is not installed: the layer, training and export '
                        r'need pip install "keras-attn\[train\]"', line), line
    assert list(tmp_path.iterdir()) == []

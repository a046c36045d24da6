"""The serving install (`pip install .`, no TensorFlow or Keras) says what to install."""

import importlib
import inspect
import re
import shutil
import subprocess
import sys
import tomllib
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


def _console_scripts():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_console_script_points_at_a_command_line(script):
    module, function = _console_scripts()[script].split(":")
    entry = getattr(importlib.import_module(module), function)
    # Console scripts call it with no arguments: argv comes from sys.argv.
    assert callable(entry) and all(p.default is not p.empty for p in inspect.signature(entry).parameters.values())


@pytest.mark.slow
def test_installed_console_scripts_answer_help():
    missing = [s for s in _console_scripts() if shutil.which(s) is None]
    if missing:
        pytest.skip(f"not installed with pip: {missing}")
    for script in _console_scripts():
        done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (script, done.stderr)
        assert done.stdout.startswith("usage: ") and done.stderr == "", script

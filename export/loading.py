"""Load Keras models for export: the ``.keras`` file, the user's modules, quiet library imports.

    from export.loading import load_keras, import_modules
    import_modules(["my_layers"])          # registers custom classes first
    model = load_keras("model.keras")

Both `export.convert` and `export.validate` load models through these, so
neither imports the other's command line. Everything here imports TensorFlow's
Keras on first use only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path

from export.cli import import_training, one_line, silenced_stderr
from export.errors import ExportError
from export.signature import tensorflow_keras

__all__ = ["import_modules", "import_tf2onnx", "load_keras", "quiet_libraries"]



def load_keras(path):
    """Load a ``.keras`` file with TensorFlow and safe mode on; its encoder becomes ``model.text_encoder``.

    Custom classes (a subclassed model, a custom layer) must be registered
    first (`import_modules`, or the CLI's ``--import MODULE``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ExportError: not a loadable Keras model (one-line reason).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ExportError(f"{path} is a folder, not a .keras file")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a Keras model: not a .keras (zip) archive, or a truncated one")
    tensorflow_keras()
    import keras_attn  # noqa: F401 - registers ScaledDotAttention for deserialization
    from keras_attn.saving import load_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(path, safe_mode=True)
    except Exception as error:
        raise ExportError(f"cannot load {path}: {_load_reason(error)}") from error


def import_modules(names) -> None:
    """Import each module named (from the current folder too), so the classes it registers load.

    Raises:
        ExportError: a module cannot be imported.
    """
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    tensorflow_keras()  # the module's Keras must be the TensorFlow one
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise ExportError(f"cannot import {name}: {type(error).__name__}: {one_line(error)}") from error


def quiet_libraries(*, debug: bool = False) -> None:
    """Import TensorFlow, Keras and tf2onnx with their start-up notices and logs silenced (unless ``debug``)."""
    if not debug:
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
    with silenced_stderr(not debug):
        import_tf2onnx()


def _load_reason(error: Exception) -> str:
    # The useful part of Keras's messages is often deep inside: search the
    # whole chain, report a short line.
    chain, seen = [], set()
    cause = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        chain.append(" ".join(str(cause).split()))
        cause = cause.__cause__ or cause.__context__
    full = " ".join(chain)
    text = one_line(error)
    if "Lambda" in full and "safe_mode" in full:
        return "it contains a Lambda layer, whose code is not run with safe mode on (Lambda layers cannot be exported)"
    match = re.search(r"Could not locate (?:class|function) '([^']+)'", full)
    if match:
        return (
            f"unknown layer or object '{match.group(1)}': only standard Keras layers and "
            "ScaledDotAttention are known here (register it with @keras.saving.register_keras_serializable "
            "in a module and pass --import MODULE, or import it before convert())"
        )
    if "config.json" in full:
        return "not a Keras model: the archive has no config.json"
    if isinstance(error, (zipfile.BadZipFile, EOFError)) or "zip" in text.lower():
        return f"damaged .keras archive ({text})"
    return f"{type(error).__name__}: {text}"


def import_tf2onnx():
    """tf2onnx (on TensorFlow's Keras), its logging held to errors."""
    tensorflow_keras()
    tf2onnx = import_training("tf2onnx")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        tf2onnx.logging.set_level(logging.ERROR)
    return tf2onnx

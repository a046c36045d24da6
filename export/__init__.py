"""Serving side of keras-attn: ONNX export and onnxruntime inference, free of TF/Keras."""

from importlib import metadata as _metadata

try:
    #: The installed distribution's version: pyproject.toml is its one home.
    __version__ = _metadata.version("keras-attn")
except _metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

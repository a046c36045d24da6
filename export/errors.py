"""The exporter's typed errors: one base class a caller can catch, subclasses it can act on.

Every message is one line that says what to do. Nothing here imports
TensorFlow, Keras or onnxruntime.
"""

from __future__ import annotations

__all__ = ["ExportError", "ExtraInputError", "ParityError", "UnbuiltModelError", "UnsupportedLayerError"]


class ExportError(Exception):
    """The model cannot be converted, or the ONNX file disagrees with Keras."""


class UnsupportedLayerError(ExportError):
    """The model holds a layer the exporter cannot convert (the message names it)."""


class UnbuiltModelError(ExportError):
    """A subclassed model that has never been called: its inputs are unknown."""


class ExtraInputError(ExportError):
    """The ONNX graph's inputs are not exactly the Keras model's inputs."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from Keras's above the tolerance.

    ``parity`` maps each output name to its max |onnxruntime - Keras|.
    """

    def __init__(self, message: str, parity: dict[str, float] | None = None):
        super().__init__(message)
        self.parity = dict(parity or {})

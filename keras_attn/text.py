"""Text encoding for training: re-exports `export.text.TextEncoder`.

The one definition lives in ``export/text.py`` so that the onnxruntime server,
which imports it, never imports Keras or TensorFlow; training and serving
therefore share the exact same cleaning, vocabulary and ids.
"""

from export.text import TextEncoder

__all__ = ["TextEncoder"]

"""keras-attn: scaled dot-product attention for Keras 3, served on onnxruntime.

Importing the package registers `ScaledDotAttention` and
`MultiHeadScaledDotAttention` with Keras, so a saved
`.keras` model that uses it loads without `custom_objects`.
"""

from export import __version__
from export.cli import import_training

import_training("keras")  # before any Keras import below: quiet, or one line naming the [train] extra

from keras_attn.attention import MultiHeadScaledDotAttention, ScaledDotAttention  # noqa: E402 - after import_training()
from keras_attn.inference import inference
from keras_attn.models import build_sentiment_model, build_text_classifier
from keras_attn.pretrained import load_pretrained
from keras_attn.saving import load_model, save_model
from keras_attn.text import TextEncoder

__all__ = [
    "MultiHeadScaledDotAttention",
    "ScaledDotAttention",
    "TextEncoder",
    "build_sentiment_model",
    "build_text_classifier",
    "inference",
    "load_model",
    "load_pretrained",
    "save_model",
    "__version__",
]

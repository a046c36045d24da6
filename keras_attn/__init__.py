"""keras-attn: scaled dot-product attention for Keras 3, served on onnxruntime.

Importing the package registers `ScaledDotAttention` with Keras, so a saved
`.keras` model that uses it loads without `custom_objects`.
"""

from keras_attn.attention import ScaledDotAttention

__version__ = "0.1.0"

__all__ = ["ScaledDotAttention", "__version__"]

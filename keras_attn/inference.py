"""The tutorial's `inference(text)`, on the Keras side."""

import functools

import numpy as np

from keras_attn.models import class_probabilities
from keras_attn.pretrained import load_pretrained


def inference(text, model=None):
    """Classifies one text: its class name, as the encoder spells it.

    For the bundled model, "positive" or "negative".

    Args:
        text: the text.
        model: a model from `keras_attn.load_model` (it carries its
            `text_encoder`, whose `labels` name the classes); defaults to the
            bundled pretrained model.

    Returns:
        The predicted class name.
    """
    model = model or _bundled()
    encoder = model.text_encoder
    output = model.predict(encoder.encode(text), verbose=0)["probability"]
    return encoder.labels[int(np.argmax(class_probabilities(output)[0]))]


@functools.cache
def _bundled():
    return load_pretrained()

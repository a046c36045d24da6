"""The tutorial's `inference(text)`, on the Keras side."""

import functools

from keras_attn.pretrained import load_pretrained


def inference(text, model=None):
    """Classifies one sentence: "Positive" or "Negative".

    Args:
        text: the sentence.
        model: a model from `keras_attn.load_model` (it carries its
            `text_encoder`); defaults to the bundled pretrained model.
    """
    model = model or _bundled()
    probability = model.predict(model.text_encoder.encode(text), verbose=0)
    return "Positive" if probability["probability"][0, 0] > 0.5 else "Negative"


@functools.cache
def _bundled():
    return load_pretrained()

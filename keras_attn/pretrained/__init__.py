"""The bundled sentiment model, trained by `python -m keras_attn.train`.

`sentiment.keras` carries its text encoder; `metrics.json` beside it records
the seed, the recipe, the data checksum and the held-out test metrics.
"""

from pathlib import Path

PATH = Path(__file__).with_name("sentiment.keras")


def load_pretrained():
    """The bundled Keras model; its encoder is `model.text_encoder`.

    Example:
        model = keras_attn.load_pretrained()
        ids = model.text_encoder.encode(["What a great phone!"])
        model.predict(ids)["probability"]
    """
    from keras_attn.saving import load_model

    return load_model(PATH)

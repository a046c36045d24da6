"""One `.keras` file that restores both the model and its text encoder.

The encoder's JSON rides inside the `.keras` zip archive as an extra member,
which `keras.models.load_model` ignores, so the file stays a plain Keras model.
"""

import zipfile

import keras

from export.files import atomic_file
from keras_attn.text import TextEncoder

ENCODER_MEMBER = "text_encoder.json"


def save_model(model, path, encoder=None):
    """Saves `model` to `path` (`.keras`), with `encoder` inside, atomically."""
    encoder = encoder or getattr(model, "text_encoder", None)
    # Keras insists on the .keras suffix of the file it writes.
    with atomic_file(path, suffix=".keras") as tmp:
        model.save(tmp)
        if encoder is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(ENCODER_MEMBER, encoder.to_json())


def read_encoder(path):
    """The `TextEncoder` stored in the `.keras` file at `path`, or None."""
    with zipfile.ZipFile(path) as archive:
        if ENCODER_MEMBER not in archive.namelist():
            return None
        return TextEncoder.from_json(archive.read(ENCODER_MEMBER).decode())


def load_model(path, *, safe_mode=True):
    """Loads a `.keras` model; its encoder, if any, is `model.text_encoder`."""
    model = keras.models.load_model(path, safe_mode=safe_mode)
    model.text_encoder = read_encoder(path)
    return model

"""The model under test and the sentences fed to every path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["REPO", "filled_ids", "generated_texts", "load_texts", "or_generated", "resolve_model"]

REPO = Path(__file__).resolve().parent.parent


def load_texts(data_dir=None) -> tuple[list[str], str]:
    """The real review sentences and where they came from, or ``([], reason)``.

    Never downloads: ``data_dir``, else ``$KERAS_ATTN_DATA``; with neither, or
    a folder that cannot be read, ``[]`` and the reason (the caller then
    generates sentences).
    """
    from keras_attn.data import DATA_ENV_VAR, load_sentences

    folder = data_dir or os.environ.get(DATA_ENV_VAR)
    if not folder:
        return [], f"no --data and no ${DATA_ENV_VAR}"
    try:
        return load_sentences(folder).texts, f"data set at {folder}"
    except Exception as error:  # noqa: BLE001 - fall back to generated sentences
        return [], f"{folder}: {error}"


def generated_texts(vocabulary, n: int = 3000, seed: int = 0) -> list[str]:
    """Sentences of 3 to 30 words drawn from ``vocabulary`` (plus a few unknown words)."""
    rng = np.random.default_rng(seed)
    words = list(vocabulary) + ["zyxxq"]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 31)))) for _ in range(n)]


def or_generated(texts: list[str], origin: str, vocabulary) -> tuple[list[str], str]:
    """``(texts, origin)`` as `load_texts` gave them, or, when it found none, sentences generated from ``vocabulary``."""
    if texts:
        return texts, origin
    return generated_texts(vocabulary), f"generated sentences ({origin})"


def filled_ids(encoder, rows: int, words: int, seed: int = 0) -> np.ndarray:
    """``rows`` encoded rows of exactly ``words`` real tokens each (the rest padding)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, encoder.seq_len), np.int32)
    ids[:, :words] = rng.integers(2, encoder.vocab_size, (rows, words))
    return ids


def resolve_model(path, workdir: Path, texts: list[str], say) -> tuple[Path, str]:
    """The ``.keras`` file to benchmark and how it was chosen.

    ``path`` if given, else the bundled pretrained model, else a stand-in built
    with `build_sentiment_model`'s defaults (the bundled model's recipe) and an encoder fitted on ``texts`` (untrained:
    its weights do not change its speed) saved into ``workdir``.
    """
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such model file: {path}")
        return path, "given with --model"
    from keras_attn.pretrained import PATH as BUNDLED

    if BUNDLED.is_file():
        return BUNDLED, "bundled pretrained model"
    say("no bundled model yet: building an untrained stand-in (build_sentiment_model defaults)")
    from keras_attn import TextEncoder, build_sentiment_model, save_model

    if not texts:
        texts = generated_texts([f"word{i}" for i in range(2999)])
    encoder = TextEncoder.fit(texts, num_words=3001, seq_len=32)
    model = build_sentiment_model(encoder.vocab_size, encoder.seq_len)
    out = workdir / "standin.keras"
    save_model(model, out, encoder)
    return out, "untrained stand-in from build_sentiment_model defaults (no bundled model yet)"

"""The model under test and the sentences fed to every path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["REPO", "SHARED_DATA", "load_texts", "resolve_model"]

REPO = Path(__file__).resolve().parent.parent
#: Where the data set is looked for when $KERAS_ATTN_DATA is not set.
SHARED_DATA = Path("/work/shared/data/sentiment_labelled_sentences")


def load_texts(data_dir=None) -> tuple[list[str], str]:
    """The real review sentences and where they came from, or ``([], reason)``.

    Never downloads: ``data_dir``, then ``$KERAS_ATTN_DATA``, then `SHARED_DATA`.
    """
    from keras_attn.data import DATA_ENV_VAR, load_sentences

    candidates = [data_dir, os.environ.get(DATA_ENV_VAR), SHARED_DATA, REPO.parent / "shared/data/sentiment_labelled_sentences"]
    reasons = []
    for folder in candidates:
        if not folder:
            continue
        try:
            return load_sentences(folder).texts, f"data set at {folder}"
        except Exception as error:  # noqa: BLE001 - fall back to generated sentences
            reasons.append(f"{folder}: {error}")
    return [], "; ".join(reasons) or "no data folder"


def generated_texts(vocabulary, n: int = 3000, seed: int = 0) -> list[str]:
    """Sentences of 3 to 30 words drawn from ``vocabulary`` (plus a few unknown words)."""
    rng = np.random.default_rng(seed)
    words = list(vocabulary) + ["zyxxq"]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 31)))) for _ in range(n)]


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

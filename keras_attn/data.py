"""Load the UCI "Sentiment Labelled Sentences" data set (Kotzias et al., KDD 2015).

Three files of 1,000 review sentences each, one ``sentence<TAB>label`` per
line with label 0 (negative) or 1 (positive). `load_sentences` looks for them,
in order, in an explicit folder, in ``$KERAS_ATTN_DATA``, in the Keras cache,
and finally downloads the UCI archive into the Keras cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["DataError", "Sentences", "load_sentences", "DATA_ENV_VAR", "FILES", "URL"]

#: Environment variable naming the folder that holds the three files.
DATA_ENV_VAR = "KERAS_ATTN_DATA"

#: Source name -> file name, in the fixed order used for loading and the checksum.
#: Names come from the files themselves (the tutorial swapped imdb and amazon).
FILES = {
    "amazon": "amazon_cells_labelled.txt",
    "imdb": "imdb_labelled.txt",
    "yelp": "yelp_labelled.txt",
}

_EXPECTED = f"it must contain {', '.join(FILES.values())}"

URL = "https://archive.ics.uci.edu/static/public/331/sentiment+labelled+sentences.zip"

# keras.utils.get_file(fname=_ARCHIVE, extract=True) extracts into
# <cache>/datasets/<archive name up to its first dot>_extracted.
_ARCHIVE = "sentiment_labelled_sentences.zip"
_EXTRACTED = "sentiment_labelled_sentences_extracted"

# The UCI zip nests the files one folder down ("sentiment labelled sentences/").
# The cap keeps a mistaken --data-dir such as $HOME from starting a disk-wide scan.
_MAX_SEARCH_DEPTH = 2

_LABELS = {"0": 0, "1": 1}


class DataError(OSError):
    """The data set cannot be found, downloaded or parsed."""


@dataclass(frozen=True, eq=False)  # eq on ndarray fields would be ambiguous
class Sentences:
    """The labelled sentences of all three sources, amazon then imdb then yelp.

    Attributes:
        texts: the sentences, surrounding whitespace removed, otherwise verbatim.
        labels: int64 array, 1 for positive and 0 for negative.
        sources: per sentence, "amazon", "imdb" or "yelp".
        checksum: sha256 hex digest of the three files' bytes concatenated in
            `FILES` order, i.e. ``cat amazon_cells_labelled.txt
            imdb_labelled.txt yelp_labelled.txt | sha256sum``.
    """

    texts: list[str]
    labels: np.ndarray
    sources: list[str]
    checksum: str

    def __len__(self) -> int:
        return len(self.texts)


def load_sentences(data_dir: str | PathLike[str] | None = None) -> Sentences:
    """Load the three files, finding or downloading them as needed.

    Where from, first match wins: ``data_dir``; ``$KERAS_ATTN_DATA``; an
    earlier download in the Keras cache (``$KERAS_HOME`` or ``~/.keras``);
    a fresh download of `URL` into that cache. An explicit folder may hold the
    files directly or in a subfolder (e.g. the unzipped archive).

    Raises:
        DataError: the folder or a file is missing, a line is malformed, or
            the download failed.
    """
    if data_dir is not None:
        folder = _find_files(Path(data_dir), "data_dir")
    elif os.environ.get(DATA_ENV_VAR):
        folder = _find_files(Path(os.environ[DATA_ENV_VAR]), DATA_ENV_VAR)
    else:
        try:
            folder = _find_files(_cache_dir() / _EXTRACTED, "the Keras cache")
        except DataError:
            folder = _find_files(_download(), "the downloaded archive")

    texts, labels, sources = [], [], []
    digest = hashlib.sha256()
    for source, name in FILES.items():
        path = folder / name
        raw = path.read_bytes()
        digest.update(raw)
        for text, label in _parse(raw, path):
            texts.append(text)
            labels.append(label)
            sources.append(source)
    return Sentences(texts, np.array(labels, dtype=np.int64), sources, digest.hexdigest())


def _find_files(root: Path, origin: str) -> Path:
    """Return the shallowest folder under ``root`` that holds all three files."""
    if not root.is_dir():
        raise DataError(
            f"data folder {str(root)!r} (from {origin}) does not exist; {_EXPECTED}"
        )
    level = [root]
    for _ in range(_MAX_SEARCH_DEPTH + 1):
        for folder in level:
            if all((folder / name).is_file() for name in FILES.values()):
                return folder
        level = sorted(
            child for folder in level for child in folder.iterdir() if child.is_dir()
        )
    raise DataError(
        f"data folder {str(root)!r} (from {origin}) does not hold the data set; {_EXPECTED}"
    )


def _cache_dir() -> Path:
    """Keras' download cache as `keras.utils.get_file` resolves it, without importing Keras."""
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "datasets"


def _download() -> Path:
    """Download and extract the UCI archive into the Keras cache; return the extracted folder."""
    import keras  # Deferred: loading from disk must not pay for importing TensorFlow.

    try:
        extracted = keras.utils.get_file(
            fname=_ARCHIVE, origin=URL, extract=True, cache_dir=str(_cache_dir().parent)
        )
    except Exception as error:  # get_file reports network failures as bare Exception.
        raise DataError(
            f"could not download the sentiment data set from {URL}: {error}. "
            f"Download and unzip it yourself, then pass --data-dir DIR "
            f"or set {DATA_ENV_VAR}=DIR."
        ) from error
    return Path(extracted)


def _parse(raw: bytes, path: Path) -> list[tuple[str, int]]:
    """Parse one file's ``sentence<TAB>label`` lines.

    Tolerates a UTF-8 BOM, CRLF line ends, blank lines and a header on line 1
    (a line whose label field is not 0/1, such as ``sentence<TAB>label``).
    Splits on the last tab, so tabs and quotes inside a sentence are kept.
    """
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 ({error})") from error

    rows = []
    # Split on "\n" only: str.splitlines() would also break at U+0085 (NEL),
    # which occurs inside two imdb sentences.
    for number, line in enumerate(content.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        text, tab, label = line.rpartition("\t")
        label = label.strip()
        if number == 1 and tab and label not in _LABELS:
            continue  # header
        text = text.strip()
        if not tab or not text or label not in _LABELS:
            raise DataError(
                f"{path}:{number}: expected 'sentence<TAB>0' or 'sentence<TAB>1', "
                f"got {line!r:.120}"
            )
        rows.append((text, _LABELS[label]))
    return rows

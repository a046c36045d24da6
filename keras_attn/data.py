"""Labelled texts for training: a user's CSV, TSV or JSON Lines file, or the UCI set.

`read_labelled_file` reads a user's file of texts and labels (any number of
classes). `load_sentences` loads the UCI "Sentiment Labelled Sentences" data
set (Kotzias et al., KDD 2015): three files of 1,000 review sentences each,
one ``sentence<TAB>label`` per line with label 0 (negative) or 1 (positive),
found by `find_data_dir`. Both give a `LabelledTexts`.

Nothing here imports TensorFlow or Keras (except to download the UCI set).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from export.tables import FORMATS as TABLE_FORMATS, TableError, column_index, csv_records, format_of, jsonl_records

__all__ = [
    "DATA_ENV_VAR",
    "FILES",
    "FORMATS",
    "SENTIMENT_CLASSES",
    "URL",
    "DataError",
    "LabelledTexts",
    "find_data_dir",
    "load_sentences",
    "read_labelled_file",
]

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
#: The UCI set's class names, in the order of its 0/1 labels.
SENTIMENT_CLASSES = ("negative", "positive")

#: Formats `read_labelled_file` reads, and the suffixes that name them.
FORMATS = {kind: TABLE_FORMATS[kind] for kind in ("csv", "tsv", "jsonl")}


#: A file that cannot be read or used, in one line naming it: the same class as
#: `export.tables.TableError`, which the shared record readers raise.
DataError = TableError


@dataclass(frozen=True, eq=False)  # eq on ndarray fields would be ambiguous
class LabelledTexts:
    """Texts with one class each.

    Attributes:
        texts: the texts, in file order.
        labels: int64 array of class indices into `classes`.
        classes: the class names, in the order of the model's outputs.
        checksum: sha256 hex digest of the bytes read (for the UCI set, the
            three files concatenated in `FILES` order, i.e. ``cat
            amazon_cells_labelled.txt imdb_labelled.txt yelp_labelled.txt |
            sha256sum``).
        origin: where the texts came from, for messages and metrics.
        sources: per text, a group to stratify by besides the class (the
            UCI set: "amazon", "imdb" or "yelp"); None for a user's file.
        skipped_empty_labels: rows left out because their label was empty.
    """

    texts: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    checksum: str
    origin: str = ""
    sources: list[str] | None = None
    skipped_empty_labels: int = 0

    def __len__(self) -> int:
        return len(self.texts)


def find_data_dir(
    data_dir: str | PathLike[str] | None = None, *, download: bool = True
) -> Path:
    """The folder holding the three UCI files, found the same way everywhere.

    First match wins: ``data_dir``; ``$KERAS_ATTN_DATA``; an earlier
    download in the Keras cache (``$KERAS_HOME`` or ``~/.keras``); a fresh
    download of `URL` into that cache (only if ``download``). A given folder
    may hold the files directly or in a subfolder (e.g. the unzipped archive).

    Raises:
        DataError: the given folder (or the variable's) does not hold the
            files, or nothing was found and the download is off or failed.
    """
    if data_dir is not None:
        return _find_files(Path(data_dir), "data_dir")
    if os.environ.get(DATA_ENV_VAR):
        return _find_files(Path(os.environ[DATA_ENV_VAR]), DATA_ENV_VAR)
    try:
        return _find_files(_cache_dir() / _EXTRACTED, "the Keras cache")
    except DataError:
        if not download:
            raise DataError(
                f"the sentiment data set is not in the Keras cache; pass --data-dir DIR "
                f"or set {DATA_ENV_VAR}=DIR ({_EXPECTED})"
            ) from None
    return _find_files(_download(), "the downloaded archive")


def load_sentences(data_dir: str | PathLike[str] | None = None) -> LabelledTexts:
    """Load the three UCI files, found (or downloaded) by `find_data_dir`.

    Returns:
        `LabelledTexts` with classes ("negative", "positive"), the sources
        amazon, then imdb, then yelp, and sentences stripped of surrounding
        whitespace, otherwise verbatim.

    Raises:
        DataError: the folder or a file is missing, a line is malformed, or
            the download failed.
    """
    folder = find_data_dir(data_dir)
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
    return LabelledTexts(
        texts,
        np.array(labels, dtype=np.int64),
        SENTIMENT_CLASSES,
        digest.hexdigest(),
        origin="UCI Sentiment Labelled Sentences",
        sources=sources,
    )


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


def read_labelled_file(
    path: str | PathLike[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    format: str | None = None,  # noqa: A002 - the CLI's --format
    labels: Sequence[str] | None = None,
) -> LabelledTexts:
    """Read a user's labelled texts from a CSV, TSV or JSON Lines file.

    CSV and TSV: a header row naming the columns, then one row per text, read
    by the `csv` module (quoted fields may hold commas, tabs, quotes doubled
    as ``""`` and line breaks; CRLF or LF; a UTF-8 byte order mark is
    ignored). JSON Lines: one object per line. Labels are strings, stripped of
    surrounding whitespace; JSON numbers keep their text as written (``1`` is
    "1", ``1.0`` is "1.0"). Texts are kept as they are (empty ones too); rows
    whose label is empty (or JSON null) are skipped and counted.

    Args:
        path: the file.
        text_column: the column (JSON key) holding the texts.
        label_column: the column (JSON key) holding the labels.
        format: "csv", "tsv" or "jsonl"; by default from the suffix (.csv;
            .tsv or .tab; .jsonl or .ndjson).
        labels: the class names in the model's output order; every label in
            the file must be one of them. By default the sorted distinct labels.

    Returns:
        `LabelledTexts` whose checksum is the file's sha256.

    Raises:
        DataError: one line naming the file (and the line where it applies):
            the file is missing or unreadable, not UTF-8, of an unknown
            format, a line cannot be parsed, the text or label column is
            missing (the columns found are named), a label is not among
            ``labels``, or fewer than 2 classes remain.
        ValueError: ``labels`` has fewer than 2, duplicate or empty names.
    """
    path = Path(path)
    if labels is not None:
        labels = tuple(label.strip() for label in labels)
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
            raise ValueError(f"labels must be 2 or more distinct non-empty names, got {list(labels)}")
    kind = format or format_of(path, FORMATS)
    if kind not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {kind!r}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({error.reason} at byte {error.start})") from None

    rows = _jsonl_rows if kind == "jsonl" else _csv_rows
    texts, names, skipped = [], [], 0
    for line, text, label in rows(content, path, text_column, label_column, kind):
        if not label:
            skipped += 1
            continue
        if labels is not None and label not in labels:
            raise DataError(f"{path}:{line}: label {label!r} is not one of the given labels {', '.join(labels)}")
        texts.append(text)
        names.append(label)

    classes = labels or tuple(sorted(set(names)))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no labelled rows"
        raise DataError(f"{path}: {found} in column {label_column!r}; training needs 2 classes or more")
    index = {name: i for i, name in enumerate(classes)}
    return LabelledTexts(
        texts,
        np.array([index[name] for name in names], dtype=np.int64),
        classes,
        hashlib.sha256(raw).hexdigest(),
        origin=str(path),
        skipped_empty_labels=skipped,
    )


def _csv_rows(content: str, path: Path, text_column: str, label_column: str, kind: str):
    """Yield ``(line number, text, label)`` of each record; the line is where it starts."""
    records = csv_records(io.StringIO(content, newline=""), path, kind)
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: empty file; expected a header row naming the columns")
    header = first[1]
    text, label = (column_index(header, name, path, role) for name, role in ((text_column, "text"), (label_column, "label")))
    for start, record in records:
        yield start, record[text], record[label].strip()


def _jsonl_rows(content: str, path: Path, text_column: str, label_column: str, kind: str):
    """Yield ``(line number, text, label)`` of each JSON object, one per line."""
    # Numbers keep their text as written: 1.0 stays "1.0", not 1.
    for number, record in jsonl_records(io.StringIO(content), path, numbers_as_text=True):
        values = []
        for name, role in ((text_column, "text"), (label_column, "label")):
            if name not in record:
                found = ", ".join(repr(key) for key in record)
                raise DataError(f"{path}:{number}: no {role} key {name!r}; the keys are {found or 'none'}")
            value = record[name]
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif value is None:
                value = ""
            elif not isinstance(value, str):
                raise DataError(
                    f"{path}:{number}: the {role} {name!r} is a JSON {type(value).__name__}, "
                    "not a string or a number"
                )
            values.append(value)
        yield number, values[0], values[1].strip()

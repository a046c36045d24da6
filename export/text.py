"""Turn raw sentences into the fixed-length id rows the sentiment model reads.

This is the one definition used by both training (via ``keras_attn.text``) and
the onnxruntime server, so that both see exactly the same ids. It depends on
plain Python and numpy only: importing it must never pull in TensorFlow or
Keras.

Id layout (format 1): 0 is padding, 1 is an out-of-vocabulary word, and
``vocabulary[i]`` is id ``i + 2``. Unlike the Keras 2 ``Tokenizer``, which
silently dropped unknown words, unknown words are kept as id 1 so every word
the user typed keeps its position and attention can be shown over it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import repeat
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["TextEncoder", "CLEANING", "FORMAT_VERSION", "PAD_ID", "OOV_ID", "OOV_TOKEN", "label_indices"]

#: Version of the JSON written by `TextEncoder.to_json`; bump it whenever the
#: id layout or the meaning of a key changes.
FORMAT_VERSION = 1

#: The tutorial's cleaning rule: lowercase, then every run of characters
#: other than a-z and 0-9 becomes a single space, then strip. It is written
#: into the JSON so a vocabulary is never used with a different rule.
CLEANING = {"lowercase": True, "pattern": "[^a-z0-9]+", "replacement": " "}
_SEPARATORS = re.compile(CLEANING["pattern"])


def _word_pattern(cleaning: dict) -> re.Pattern:
    """The words the rule keeps: runs of the complement of its separator class.

    Replacing every run of ``[^...]`` by a space and splitting on whitespace
    leaves exactly the runs of ``[...]`` (for a kept class without
    whitespace, as a-z0-9; tests/test_text.py checks the equivalence on
    arbitrary unicode).
    """
    pattern = cleaning["pattern"]
    if not (pattern.startswith("[^") and pattern.endswith("]+")) or not cleaning["replacement"].isspace():
        raise ValueError(f"cannot derive the words of cleaning rule {cleaning!r}")
    return re.compile("[" + pattern[2:])


_WORDS = _word_pattern(CLEANING)
_LOWERCASE = CLEANING["lowercase"]

# The words of many texts at once, in C: join the texts by _BREAK, lowercase,
# encode to ASCII (any other character becomes "?", which is not kept), map
# every byte the rule does not keep to a space and split. The kept bytes are
# those `_WORDS` matches; _BREAK alone becomes _ROW_END, which no text can
# contain after the encoding, so it marks where each text ends. Lowercasing
# the joined texts gives the same words: the only context rule of str.lower
# (final sigma) maps to non-ASCII letters either way. (bytes.split there
# instead of a regex findall on each text: 1024 real sentences in 2.7 ms
# instead of 3.7, before the lookup in numpy; AMD EPYC, load 0.7, 2026-12-03.)
#
# Only ASCII survives, so the lowercasing that matters is A-Z, done by the
# byte map, and the non-ASCII characters whose lowercase holds ASCII, which
# are replaced by it before encoding: str.lower on the joined texts took 141
# of the 224 us of 1024 real sentences, a few of them not ASCII. Every other
# character is a separator before and after lowercasing. tests/test_text.py
# checks _ASCII_LOWERCASE against every codepoint of the running Python.
_BREAK = "\x00"
_ROW_END = b"\xff"
_ASCII_LOWERCASE = {char: char.lower() for char in ("\u0130", "\u212a")} if _LOWERCASE else {}  # İ -> i + U+0307, Kelvin sign -> k


def _kept_byte(byte: int) -> int:
    char = chr(byte).lower() if _LOWERCASE else chr(byte)
    return ord(_ROW_END) if byte == ord(_BREAK) else ord(char) if _WORDS.fullmatch(char) else ord(" ")


_KEPT_BYTES = bytes(map(_kept_byte, range(256)))

PAD_ID = 0
OOV_ID = 1
_FIRST_WORD_ID = 2

# Looking up the words of many texts at once, in numpy (`TextEncoder._encode_many`):
# a word's key is its bytes, zero padded to whole chunks of _CHUNK bytes and
# read as little-endian uint64s (a kept byte is never 0, so two words share a
# key only if they are the same word), found in a table of the vocabulary's
# keys by slot. Below _MANY_TEXTS texts the fixed cost of its numpy calls
# (about 40 us) is more than Python's dict takes on every word: 32 real
# sentences took 56 us by dict and 58 by table, 64 took 97 and 70, 256 took
# 454 and 148 (AMD EPYC, load 1.0-1.4, 2026-12-03).
_CHUNK = 8
_CHUNK_MASKS = np.array([(1 << (8 * size)) - 1 for size in range(_CHUNK + 1)], dtype=np.uint64)
#: Odd multiplier (2**64 / golden ratio) mixing a word's first chunk and length; its slot is the top bits of the mix.
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MANY_TEXTS = 32
_SPACE = ord(" ")

#: How `TextEncoder.tokens` shows an unknown word. The brackets cannot survive
#: cleaning, so this marker never collides with a real vocabulary word.
OOV_TOKEN = "[UNK]"


class TextEncoder:
    """Map text to padded rows of word ids with a fixed vocabulary.

    Args:
        vocabulary: the known words, most useful first; ``vocabulary[i]`` gets
            id ``i + 2``. Each must be a single already-cleaned word.
        seq_len: length of every encoded row; longer texts are cut at the end,
            shorter ones padded at the end (like ``pad_sequences(...,
            padding="post", truncating="post")`` in the tutorial).
        labels: class names, in the order of the model's output units.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        seq_len: int = 32,
        labels: Sequence[str] = ("negative", "positive"),
    ) -> None:
        self._vocabulary = _str_tuple(vocabulary, "vocabulary")
        self._labels = _str_tuple(labels, "labels")
        is_int = isinstance(seq_len, (int, np.integer)) and not isinstance(seq_len, bool)
        if not is_int or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        self._seq_len = int(seq_len)

        # A word that cleaning would alter could never be matched by encode().
        for word in self._vocabulary:
            if self.tokenize(word) != [word]:
                raise ValueError(f"vocabulary entry {word!r} is not a single cleaned word")
        if len(set(self._vocabulary)) != len(self._vocabulary):
            raise ValueError("vocabulary contains duplicate words")
        if not self._labels or len(set(self._labels)) != len(self._labels):
            raise ValueError(f"labels must be non-empty and unique, got {self._labels!r}")

        self._ids = {word: i for i, word in enumerate(self._vocabulary, _FIRST_WORD_ID)}
        self._byte_ids = {word.encode("ascii"): i for word, i in self._ids.items()}
        self._words = ("", OOV_TOKEN, *self._vocabulary)  # by id; "" is padding
        self._build_table()

    @classmethod
    def fit(
        cls,
        texts: str | Iterable[str],
        num_words: int = 1000,
        seq_len: int = 32,
        labels: Sequence[str] = ("negative", "positive"),
    ) -> TextEncoder:
        """Build an encoder from the ``num_words - 2`` most frequent words.

        Every id is then below ``num_words`` (ids 0 and 1 are reserved), so
        ``vocab_size == num_words`` when the corpus has enough distinct words.
        Ties are broken by word, ascending, so the result does not depend on
        the order of ``texts``.
        """
        if num_words < _FIRST_WORD_ID:
            raise ValueError(f"num_words must be at least {_FIRST_WORD_ID}, got {num_words}")
        counts = Counter()
        for text in _as_texts(texts):
            counts.update(cls.tokenize(text))
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return cls(ranked[: num_words - _FIRST_WORD_ID], seq_len=seq_len, labels=labels)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Known words; ``vocabulary[i]`` has id ``i + 2``."""
        return self._vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids, padding and OOV included: the embedding's input_dim."""
        return len(self._vocabulary) + _FIRST_WORD_ID

    @property
    def seq_len(self) -> int:
        """Length of every encoded row."""
        return self._seq_len

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in the order of the model's output units."""
        return self._labels

    @staticmethod
    def clean(text: str) -> str:
        """Apply the cleaning rule `CLEANING`: ``"Don't STOP!"`` becomes ``"don t stop"``."""
        return _SEPARATORS.sub(CLEANING["replacement"], text.lower()).strip()

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Split cleaned text into words; empty for text without any a-z/0-9.

        Always ``clean(text).split()``, computed as `encode` finds words.
        """
        return [word.decode("ascii") for word in _kept_bytes([text]).split()]

    def encode(self, texts: str | Iterable[str]) -> np.ndarray:
        """Encode texts into an int32 array of shape ``(len(texts), seq_len)``.

        A single string is encoded as a batch of one. Row ``i`` holds the ids
        of ``tokenize(texts[i])[:seq_len]`` (`OOV_ID` for a word outside the
        vocabulary), then `PAD_ID`.
        """
        texts = _as_texts(texts)
        rows = np.zeros((len(texts), self._seq_len), dtype=np.int32)  # PAD_ID == 0
        if not texts:
            return rows
        kept = _kept_bytes(texts)
        if len(texts) >= _MANY_TEXTS:
            self._encode_many(kept, rows)
            return rows
        lookup, seq_len = self._byte_ids.get, self._seq_len
        for i, words in enumerate(kept.split(_ROW_END) if len(texts) > 1 else (kept,)):  # one text: 0.4 us less
            ids = list(map(lookup, words.split()[:seq_len], repeat(OOV_ID)))
            rows[i, : len(ids)] = ids
        return rows

    def _encode_many(self, kept: bytes, rows: np.ndarray) -> None:
        """Write the ids of `_kept_bytes`'s ``kept`` into ``rows`` (zeros), without a Python step per text or word.

        The runs of bytes other than spaces are the words, and `_ROW_END`
        alone between two texts: a run's text is the number of `_ROW_END`
        runs before it, its position the number of runs since the last one.
        encode of 1024 real sentences: 0.45 ms, against 2.3 with a dict
        lookup per word row by row (the model's own run takes about 3 ms;
        AMD EPYC, load 1.7, 2026-12-03).
        """
        n, seq_len = rows.shape
        kept += b" " * (len(self._entry_keys) * _CHUNK)  # room for `_chunk` to read 8 bytes from any chunk of a word
        text = np.frombuffer(kept, np.uint8)
        solid = np.zeros(text.size + 1, np.bool_)
        np.not_equal(text, _SPACE, out=solid[1:])
        edges = np.flatnonzero(solid[1:] != solid[:-1])  # text ends in spaces: starts and ends alternate
        starts, ends = edges[0::2], edges[1::2]
        row_ends = text[starts] == ord(_ROW_END)
        row = np.cumsum(row_ends)
        first = np.zeros(n, np.intp)  # each text's first run
        first[1:] = np.flatnonzero(row_ends) + 1
        position = np.arange(starts.size)
        position -= first[row]
        words = np.flatnonzero((position < seq_len) & ~row_ends)
        starts = starts[words]
        row *= seq_len
        row += position  # each run's place in rows, flattened
        np.put(rows, row[words], self._lookup(kept, starts, ends[words] - starts))

    def _build_table(self) -> None:
        """The vocabulary by entry (index + 1; entry 0 is no word) and the table of entries by slot that `_lookup` reads.

        The table has a power of two of at least 4 slots per word, so that
        most words find their slot empty (unknown) or holding themselves
        (known). Of two words with one slot, the first keeps it; the other
        is found in the dict.
        """
        words = [word.encode("ascii") for word in self._vocabulary]
        self._longest = max(map(len, words), default=0)
        chunks = max(1, -(-self._longest // _CHUNK))
        # _CHUNK_MASKS of each chunk by word length, up to the longest (a longer word is read as cut to it).
        self._masks = np.array([[_CHUNK_MASKS[min(max(size - _CHUNK * j, 0), _CHUNK)] for size in range(self._longest + 1)]
                                for j in range(chunks)], dtype=np.uint64)
        lengths = np.array([len(word) for word in words], dtype=np.intp)
        starts = np.cumsum(lengths + 1) - lengths - 1
        joined = b" ".join(words) + b" " * (chunks * _CHUNK)
        self._entry_lengths = np.concatenate([np.zeros(1, np.intp), lengths])  # entry 0 matches no word
        self._entry_keys = [np.concatenate([np.zeros(1, np.uint64), self._chunk(joined, starts, lengths, j)])
                            for j in range(chunks)]
        self._slot_bits = max(1, (4 * len(words)).bit_length())
        self._table = np.zeros(1 << self._slot_bits, dtype=np.int32)
        entries = np.arange(1, len(words) + 1, dtype=np.int32)
        self._table[self._slots(self._entry_keys[0][1:], lengths)[::-1]] = entries[::-1]  # the last write wins: the first word

    def _chunk(self, kept: bytes, starts: np.ndarray, lengths: np.ndarray, j: int) -> np.ndarray:
        """Chunk ``j`` of the keys of the words of ``kept`` at ``starts`` with ``lengths``: bytes ``8j`` to ``8j + 8``, zero padded.

        ``kept`` must hold ``8 * (j + 1)`` bytes from every start.
        """
        at = np.ndarray((len(kept) - _CHUNK + 1,), dtype="<u8", buffer=kept, strides=(1,))  # 8 bytes from each offset
        # Indexing, not np.take, which copies all of ``at`` first (22 us at batch 1024, for 713 long words).
        chunk = at[starts + _CHUNK * j] if j else at[starts]
        chunk &= self._masks[j][np.minimum(lengths, self._longest)]
        return chunk

    def _slots(self, heads: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The slots of words with first chunks ``heads`` and ``lengths``: the top bits of both mixed by `_MIX`.

        The length tells apart most words that begin with the same 8 bytes.
        """
        mixed = lengths.astype(np.uint64)
        mixed ^= heads
        mixed *= _MIX  # wraps modulo 2**64
        mixed >>= np.uint64(64 - self._slot_bits)
        return mixed.view(np.int64)  # below 2**63: the same values

    def _lookup(self, kept: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The id of each word of ``kept`` at ``starts`` with ``lengths``, from one probe of the table.

        A word whose slot is empty is unknown; one whose slot holds a word of
        its length and chunks is that word (the chunks after the first
        compared for words longer than 8 bytes only: about 1 in 10); the
        others (another word has their slot: 1.6% of the words of 1024 real
        sentences) are looked up in the dict. A word longer than every known
        one matches none by its length, whatever its chunks. Slots from the
        first chunk and the length, and the later chunks compared on long
        words only, made encode of 1024 real sentences 0.53 ms instead of
        0.68 with every chunk mixed and compared for every word.
        """
        head = self._chunk(kept, starts, lengths, 0)
        entry = self._table[self._slots(head, lengths)]
        same = (self._entry_lengths[entry] == lengths) & (self._entry_keys[0][entry] == head)
        if len(self._entry_keys) > 1:
            long = np.flatnonzero(same & (lengths > _CHUNK))
            long_starts, long_lengths, long_entry = starts[long], lengths[long], entry[long]
            for j, entry_keys in enumerate(self._entry_keys[1:], 1):
                same[long] &= entry_keys[long_entry] == self._chunk(kept, long_starts, long_lengths, j)
        ids = np.where(same, entry + (_FIRST_WORD_ID - 1), np.int32(OOV_ID))
        other = np.flatnonzero(~same & (entry != 0))
        if other.size:
            lookup = self._byte_ids.get
            ids[other] = [lookup(kept[start:start + length], OOV_ID)
                          for start, length in zip(starts[other].tolist(), lengths[other].tolist())]
        return ids

    def tokens(self, text: str) -> list[str]:
        """The words of ``text`` as the model sees them, for labelling attention maps.

        Item ``i`` is the word at position ``i`` of ``encode(text)[0]``; unknown
        words appear as `OOV_TOKEN` and the list stops at ``seq_len`` (padding
        positions are not listed).
        """
        words = self.tokenize(text)[: self._seq_len]
        return [word if word in self._ids else OOV_TOKEN for word in words]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """The words of one encoded row, padding left out: ``tokens`` of its text.

        Cheaper than `tokens` when the row is at hand (no second tokenizing).
        """
        return [self._words[i] for i in ids if i != PAD_ID]

    def to_json(self) -> str:
        """Serialise to JSON, recording the format version and the cleaning rule."""
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "cleaning": CLEANING,
                "seq_len": self._seq_len,
                "labels": list(self._labels),
                "vocabulary": list(self._vocabulary),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> TextEncoder:
        """Rebuild an encoder written by `to_json`.

        Raises:
            ValueError: the JSON is malformed, of an unknown format version,
                or was built with a cleaning rule other than this module's
                (its ids would silently mean different words).
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("text encoder JSON must be an object")
        version = data.get("format")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported text encoder format {version!r}; "
                f"this code reads format {FORMAT_VERSION}"
            )
        if data.get("cleaning") != CLEANING:
            raise ValueError(
                f"text encoder was built with cleaning rule {data.get('cleaning')!r}, "
                f"but this code cleans with {CLEANING!r}; re-fit the encoder"
            )
        try:
            return cls(data["vocabulary"], seq_len=data["seq_len"], labels=data["labels"])
        except KeyError as missing:
            raise ValueError(f"text encoder JSON lacks the key {missing}") from None

    def save(self, path: str | PathLike[str]) -> None:
        """Write `to_json` to ``path`` as UTF-8."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> TextEncoder:
        """Read an encoder written by `save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def _key(self) -> tuple:
        return self._vocabulary, self._seq_len, self._labels

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextEncoder):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"TextEncoder(vocab_size={self.vocab_size}, seq_len={self._seq_len}, "
            f"labels={self._labels!r})"
        )


def label_indices(probability: np.ndarray) -> np.ndarray:
    """The predicted label per row (an index into the encoder's labels) from a model's ``probability`` output.

    One sigmoid unit, ``(n, 1)``, picks the second label from ``p >= 0.5``;
    k softmax units, ``(n, k)``, pick their argmax. The one rule for every
    server: `export.runtime`, `export.serve` and Triton's ensemble (which
    carries this file).
    """
    probability = np.asarray(probability)
    if probability.shape[1] == 1:
        return (probability[:, 0] >= 0.5).astype(np.int64)
    return probability.argmax(axis=1)


def _kept_bytes(texts: list[str]) -> bytes:
    """``texts`` as `_KEPT_BYTES` keeps them, `_ROW_END` between two: each text's words are its part's `bytes.split`."""
    joined = f" {_BREAK} ".join(texts)
    if joined.count(_BREAK) != len(texts) - 1:  # a text holds _BREAK: a separator to the rule, as a space
        joined = f" {_BREAK} ".join(text.replace(_BREAK, " ") for text in texts)
    if not joined.isascii():
        for char, lowered in _ASCII_LOWERCASE.items():
            if char in joined:
                joined = joined.replace(char, lowered)
    return joined.encode("ascii", "replace").translate(_KEPT_BYTES)


def _as_texts(texts: str | Iterable[str]) -> list[str]:
    """Accept one string or an iterable of strings; reject anything else early."""
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}: {text!r:.60}")
    return texts


def _str_tuple(items: Sequence[str], name: str) -> tuple[str, ...]:
    # A bare string would otherwise be taken as a sequence of characters.
    if isinstance(items, str):
        raise TypeError(f"{name} must be a sequence of str, not a str: {items!r:.60}")
    items = tuple(items)
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{name} must contain only str, got {items!r:.60}")
    return items

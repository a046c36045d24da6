"""Serve an exported sentiment model on onnxruntime: text in, label and attention out.

This module imports only numpy, onnxruntime and `export.text`; it must never
import TensorFlow or Keras (a test checks it). Everything it needs, the text
encoder included, comes from the ``.onnx`` file written by `export.to_onnx`.

    >>> predictor = SentimentPredictor("sentiment.onnx")
    >>> predictor.predict_proba(["what a great film"])
    array([0.97], dtype=float32)
    >>> predictor.predict("what a great film")[0].label
    'positive'
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.session import open_session
from export.text import TextEncoder

__all__ = [
    "CHUNK_SIZE",
    "METADATA_ENCODER_KEY",
    "METADATA_PADDING_FREE_KEY",
    "Prediction",
    "SentimentPredictor",
    "read_metadata",
]

#: ONNX metadata key holding `TextEncoder.to_json()`.
METADATA_ENCODER_KEY = "text_encoder"

#: ONNX metadata key set to "true" by `export.to_onnx` when it checked that
#: each row's outputs are the same on the row cut after its last word: only
#: then does the runtime skip padding.
METADATA_PADDING_FREE_KEY = "padding_free"

#: Most rows per onnxruntime call for large inputs. Measured on the sentiment
#: model (2 cores, best of 20 runs of 1024 rows): 256-row chunks gave 85k
#: rows/s against 71k for one 1024-row call, and 128 to 512 were within 10%
#: of each other; larger chunks lose cache locality (the attention output
#: alone is 4 KiB a row) and cost memory, smaller ones pay per-call overhead.
#: With ``threads > 1``, calls of 64 rows or more are also split so every
#: worker thread gets rows.
CHUNK_SIZE = 256

#: Below this many rows per piece, splitting a call across threads costs more
#: than it saves.
_MIN_PARALLEL_ROWS = 32

#: Calls of fewer rows never use the thread pool.
_MIN_THREADED_ROWS = 64

#: A single int32 row of up to this many ids is checked with Python's
#: min/max on a list, which also finds its length: measured 1.9 us against
#: 1.4 us for the numpy reduction alone (plus its length) at 40 ids, but
#: 3.2 us at 80 and 23 us at 640.
_ROW_IDS = 64

#: From this many rows, a model with a dynamic sequence axis gets its rows
#: sorted by length and cut into chunks of similar lengths; fewer rows run as
#: one call cut at the longest row.
_PLAN_ROWS = 16

#: Cost model of one onnxruntime call on the sentiment recipe, fitted on
#: 1 to 256 rows of 1 to 40 tokens (1 thread, within 14%): 20.2 us a call +
#: 0.71 us a row + 0.44 us a token + 0.0059 us a token squared (attention),
#: i.e. a call costs ~46 tokens of work and a row of L tokens L + L**2 / 74
#: (before `export.simplify` folded the Conv1D bias: 26.6 us, 47 and 105).
#: `_plan` ends a chunk of sorted rows before a longer length when padding
#: its rows to that length would cost more than a call. The greedy walk
#: does best with a lower call cost than measured (it cannot look ahead):
#: on real sentences it then comes within 5% of the optimal partition, and
#: 74 or 105 for the square term measure the same.
_CALL_COST_TOKENS = 20
_SQUARE_TOKENS = 105

_PROBABILITY = "probability"
_ATTENTION = "attention"


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one text.

    Attributes:
        text: the text as given.
        label: the predicted class name, from the encoder's labels.
        probability: the model's probability of the second label
            (``"positive"``), whatever the predicted label.
        attention: ``(word, weight)`` for each word the model read, in order:
            how much the sentence attends to that word (the attention rows of
            the real words averaged, over the real words only; the weights sum
            to 1). Unknown words show as ``"[UNK]"``; empty for a text without
            any word.
    """

    text: str
    label: str
    probability: float
    attention: tuple[tuple[str, float], ...]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most attended words, highest weight first (ties: earlier word first)."""
        order = sorted(range(len(self.attention)), key=lambda i: (-self.attention[i][1], i))
        return [self.attention[i] for i in order[: max(k, 0)]]

    def to_dict(self) -> dict:
        """Plain types, ready for `json.dumps`."""
        return {
            "text": self.text,
            "label": self.label,
            "probability": self.probability,
            "attention": [[word, weight] for word, weight in self.attention],
        }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The custom metadata of the ONNX file at ``path`` (producer, versions, encoder)."""
    session = open_session(path, threads=1)
    meta = session.get_modelmeta()
    return {
        "producer_name": meta.producer_name,
        "version": str(meta.version),
        **meta.custom_metadata_map,
    }


class SentimentPredictor:
    """Sentiment predictions from a self-contained ONNX file.

    Args:
        path: an ``.onnx`` file written by `export.to_onnx` from a model that
            carried its text encoder.
        threads: threads one call may use; ``None`` means 1. Each
            onnxruntime run is single-threaded; with more threads, a call of
            64 rows or more is split into chunks run in parallel (worth it
            only for large batches on otherwise idle cores).
        chunk_size: most rows per onnxruntime call.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a sentiment model with a text encoder in
            its metadata (one int32 input, ``probability`` and ``attention``
            outputs).

    One predictor may be shared between threads: it holds no mutable state
    and `onnxruntime.InferenceSession.run` is thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
        if isinstance(chunk_size, bool) or int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.path = Path(path)
        # Each run is single-threaded: measured on 2 shared cores,
        # onnxruntime's intra-op pool (a barrier after each of ~45 small ops)
        # lost up to half its throughput whenever another process took a
        # core. One thread by default: with rows cut to their length, a
        # second thread over chunks gained at batch 1024 on idle cores only
        # (100-116k against 86-90k rows/s), lost at batch 64 (56-63k against
        # 71-73k), and lost under load before (33k against 41.6k); it would
        # make throughput depend on the batch size. Callers that share one
        # predictor across their own threads get the parallelism anyway.
        self._workers = int(threads) if threads is not None else 1
        self._session = open_session(self.path, threads=1)
        self._pool = None
        self._pool_lock = threading.Lock()
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        encoder_json = self.metadata.get(METADATA_ENCODER_KEY)
        if encoder_json is None:
            raise ValueError(
                f"{self.path} has no text encoder in its metadata: export it with "
                "`python -m export.to_onnx` from a .keras model saved with its encoder"
            )
        try:
            self.encoder = TextEncoder.from_json(encoder_json)
        except ValueError as error:
            raise ValueError(f"{self.path}: unusable text encoder in metadata: {error}") from None
        self._chunk = int(chunk_size)
        self._check_signature()

    def _check_signature(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(int32)" or len(inputs[0].shape) != 2:
            found = [(i.name, i.type, i.shape) for i in inputs]
            raise ValueError(f"{self.path}: expected one int32 input of shape (batch, seq_len), found {found}")
        self._input = inputs[0].name
        length = inputs[0].shape[1]
        # A fixed length must be the encoder's; a dynamic one accepts any.
        if isinstance(length, int) and length != self.encoder.seq_len:
            raise ValueError(
                f"{self.path}: the model reads {length} tokens but its encoder writes {self.encoder.seq_len}"
            )
        self._fixed_length = isinstance(length, int)
        self._trims = not self._fixed_length and self.metadata.get(METADATA_PADDING_FREE_KEY) == "true"
        outputs = {o.name: o for o in self._session.get_outputs()}
        missing = {_PROBABILITY, _ATTENTION} - set(outputs)
        if missing:
            raise ValueError(f"{self.path}: missing output(s) {sorted(missing)}; found {sorted(outputs)}")
        width = outputs[_PROBABILITY].shape[-1] if outputs[_PROBABILITY].shape else None
        if width != 1 or len(self.encoder.labels) != 2:
            raise ValueError(
                f"{self.path}: expected a probability of shape (batch, 1) and 2 labels, "
                f"found shape {outputs[_PROBABILITY].shape} and labels {self.encoder.labels}"
            )
        self._outputs = [_PROBABILITY, _ATTENTION]

    # -- properties ---------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        return self.encoder.labels

    @property
    def seq_len(self) -> int:
        return self.encoder.seq_len

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    # -- inference ----------------------------------------------------------

    def run_ids(self, ids) -> dict[str, np.ndarray]:
        """Run the model on encoded ids.

        Args:
            ids: integers of shape ``(n, seq_len)``, each in
                ``[0, vocab_size)`` (0 is padding). Any integer dtype is
                accepted and converted to int32. A model with a dynamic
                sequence axis accepts any width.

        Returns:
            ``{"probability": float32 (n, 1), "attention": float32
            (n, width, width)}``: the model's outputs as they are.

        Raises:
            ValueError: wrong dtype, shape, or an id outside the vocabulary.

        A model that `export.to_onnx` found padding-free (metadata
        ``padding_free``; the sentiment builder's models are) is run on each
        row cut after its last real token, rows of similar lengths batched
        together, and its attention padded back with zeros: the same result
        as a run on the padded rows, for less work.
        """
        if (
            type(ids) is np.ndarray
            and ids.dtype == np.int32
            and ids.shape[0] == 1
            and ids.ndim == 2
            and 0 < ids.shape[1] <= _ROW_IDS
            and ids.flags.c_contiguous
        ):
            # One encoded sentence: plain Python on its ids is cheaper than
            # numpy reductions at this size.
            row = ids.ravel().tolist()
            if min(row) >= 0 and max(row) < self.vocab_size:
                if self._trims:
                    return self._run_trimmed(ids, _length(row))
                if ids.shape[1] == self.seq_len:
                    probability, attention = self._session.run(self._outputs, {self._input: ids})
                    return {_PROBABILITY: probability, _ATTENTION: attention}
        ids = self._check_ids(ids)
        n, width = ids.shape
        if n == 0:
            return {
                _PROBABILITY: np.zeros((0, 1), np.float32),
                _ATTENTION: np.zeros((0, width, width), np.float32),
            }
        if not self._trims:
            return self._run_fixed(ids)
        if n == 1:
            return self._run_trimmed(ids, _length(ids.ravel().tolist()))
        real = ids != 0
        if n < _PLAN_ROWS:
            last = real.any(axis=0).nonzero()[0]
            return self._run_trimmed(ids, int(last[-1]) + 1 if last.size else 1)
        # Length of each row up to its last real token (0: all padding).
        lengths = np.max(real * np.arange(1, width + 1, dtype=np.int32), axis=1)
        order = np.argsort(lengths, kind="stable")
        max_rows = self._chunk
        if self._workers > 1 and n >= _MIN_THREADED_ROWS:  # a chunk for every thread
            max_rows = min(max_rows, max(-(-n // self._workers), _MIN_PARALLEL_ROWS))
        chunks = _plan(lengths[order], max_rows)
        probability = np.empty((n, 1), np.float32)
        attention = np.zeros((n, width, width), np.float32)

        def run(chunk):
            start, stop, length = chunk
            rows = order[start:stop]
            p, a = self._session.run(self._outputs, {self._input: ids[rows, :length]})
            probability[rows] = p
            attention[rows, :length, :length] = a

        self._map(run, chunks)
        return {_PROBABILITY: probability, _ATTENTION: attention}

    def _run_trimmed(self, ids: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """One call on ``ids`` cut to ``length`` columns; attention padded back."""
        n, width = ids.shape
        if length == width:
            probability, attention = self._session.run(self._outputs, {self._input: ids})
        else:
            probability, cut = self._session.run(
                self._outputs, {self._input: np.ascontiguousarray(ids[:, :length])}
            )
            attention = np.zeros((n, width, width), np.float32)
            attention[:, :length, :length] = cut
        return {_PROBABILITY: probability, _ATTENTION: attention}

    def _run_fixed(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Rows as given (not padding-free), in chunks of at most ``chunk_size``."""
        n, length = ids.shape
        pieces = -(-n // self._chunk)
        if self._workers > 1 and n >= _MIN_THREADED_ROWS:
            pieces = max(pieces, min(self._workers, n // _MIN_PARALLEL_ROWS))
        if pieces == 1:
            probability, attention = self._session.run(self._outputs, {self._input: ids})
            return {_PROBABILITY: probability, _ATTENTION: attention}
        size = -(-n // pieces)
        probability = np.empty((n, 1), np.float32)
        attention = np.empty((n, length, length), np.float32)

        def run(start):
            stop = start + size
            p, a = self._session.run(self._outputs, {self._input: ids[start:stop]})
            probability[start:stop] = p
            attention[start:stop] = a

        self._map(run, range(0, n, size))
        return {_PROBABILITY: probability, _ATTENTION: attention}

    def _map(self, run, items) -> None:
        items = list(items)
        if self._workers > 1 and len(items) > 1:
            for _ in self._executor().map(run, items):
                pass
        else:
            for item in items:
                run(item)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sentiment-onnx")
        return self._pool

    def predict_proba(self, texts: str | Iterable[str]) -> np.ndarray:
        """Probability of the second label (``"positive"``) per text, shape ``(n,)``.

        A single string is one text.
        """
        return self.run_ids(self.encoder.encode(texts))[_PROBABILITY][:, 0]

    def predict(self, texts: str | Iterable[str]) -> list[Prediction]:
        """One `Prediction` per text (a single string is one text)."""
        if isinstance(texts, str):
            texts = [texts]
        else:
            texts = list(texts)
        ids = self.encoder.encode(texts)
        outputs = self.run_ids(ids)
        negative, positive = self.encoder.labels
        results = []
        for text, row, probability, weights in zip(
            texts, ids.tolist(), outputs[_PROBABILITY][:, 0], outputs[_ATTENTION]
        ):
            words = self.encoder.decode(row)
            n = len(words)
            if n:
                # Each real query row sums to 1 over the real keys (padding
                # keys get exactly 0), so their mean does too.
                per_word = weights[:n, :n].mean(axis=0, dtype=np.float64)
                attention = tuple((word, float(w)) for word, w in zip(words, per_word))
            else:
                attention = ()
            p = float(probability)
            results.append(Prediction(text, positive if p >= 0.5 else negative, p, attention))
        return results

    def _check_ids(self, ids) -> np.ndarray:
        if not isinstance(ids, np.ndarray):
            try:
                ids = np.asarray(ids)
            except (ValueError, TypeError) as error:
                raise ValueError(f"ids must be an integer array of shape (n, {self.seq_len}): {error}") from None
        if ids.dtype.kind not in "iu":
            if ids.size == 0 and ids.dtype.kind == "f":
                ids = ids.astype(np.int32)
            else:
                raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.ndim != 2 or (self._fixed_length and ids.shape[1] != self.seq_len) or ids.shape[1] == 0:
            raise ValueError(f"ids must have shape (n, {self.seq_len}), got {ids.shape}")
        # One reduction: seen as unsigned, a negative id is huge.
        if ids.size and int(ids.view(f"u{ids.dtype.itemsize}").max()) >= self.vocab_size:
            low, high = int(ids.min()), int(ids.max())
            bad = low if low < 0 else high
            raise ValueError(f"id {bad} is outside the vocabulary: ids must be in [0, {self.vocab_size})")
        if ids.dtype != np.int32 or not ids.flags.c_contiguous:
            ids = np.ascontiguousarray(ids, dtype=np.int32)
        return ids

    def __repr__(self) -> str:
        return f"SentimentPredictor({str(self.path)!r}, {self.encoder!r})"


def _length(row: list[int]) -> int:
    """One past the last nonzero id of ``row``; at least 1 (an all-padding row)."""
    try:
        length = row.index(0)
    except ValueError:
        return len(row)
    if any(row[length:]):  # a word after padding: find the last one
        length = len(row)
        while row[length - 1] == 0:
            length -= 1
    return max(length, 1)


def _plan(lengths: np.ndarray, max_rows: int) -> list[tuple[int, int, int]]:
    """``(start, stop, length)`` chunks of rows sorted by ascending ``lengths``.

    Walking up the lengths, a chunk ends where padding its rows to the next
    longer length would cost more than a call (`_CALL_COST_TOKENS`); chunks of
    more than ``max_rows`` rows are then cut evenly. ``length`` is the
    longest row of its chunk, at least 1.
    """
    n = len(lengths)
    bounds = [0, *(np.flatnonzero(lengths[1:] != lengths[:-1]) + 1).tolist(), n]
    values = lengths[bounds[:-1]].tolist()
    spans = []
    start, top = 0, values[0]
    for bound, value in zip(bounds[1:-1], values[1:]):
        # Padding the rows so far from `top` to `value` tokens, or one more call?
        if (bound - start) * (value - top) * (_SQUARE_TOKENS + value + top) > _CALL_COST_TOKENS * _SQUARE_TOKENS:
            spans.append((start, bound))
            start = bound
        top = value
    spans.append((start, n))
    chunks = []
    for start, stop in spans:
        size = -(-(stop - start) // -(-(stop - start) // max_rows))
        for first in range(start, stop, size):
            last = min(first + size, stop)
            chunks.append((first, last, max(int(lengths[last - 1]), 1)))
    return chunks

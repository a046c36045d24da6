"""Serve exported models on onnxruntime: any ``.onnx`` file, and text classifiers with their encoder.

This module imports only numpy, onnxruntime and `export.text` / `export.session`;
it must never import TensorFlow or Keras (a test checks it). Everything a text
model needs, its encoder included, comes from the ``.onnx`` file written by
`export.to_onnx`.

It reads top-down, in layers:

- `export.session.open_session`: the one place sessions are opened;
- `OnnxModel`: any ONNX file: its inputs and outputs, feeds checked before
  onnxruntime sees them, and threads sized to the work of each call;
- `sequence_lengths` and `plan_chunks`: batching and length-bucketing, as pure
  functions;
- `TextClassifier`: encode, run, decode, for a model that carries its text
  encoder and has a ``probability`` output (1 sigmoid unit or k softmax
  units); `SentimentPredictor` is its two-label case.

    >>> classifier = TextClassifier("sentiment.onnx")
    >>> classifier.predict_proba(["what a great film"])
    array([[0.03, 0.97]], dtype=float32)
    >>> classifier.predict("what a great film")[0].label
    'positive'
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.session import open_session
from export.text import TextEncoder, label_indices

__all__ = [
    "MAX_CALL_WORK",
    "METADATA_ENCODER_KEY",
    "METADATA_PADDING_FREE_KEY",
    "PARALLEL_WORK",
    "SPLIT_WORK",
    "OnnxModel",
    "Prediction",
    "SentimentPredictor",
    "TensorSpec",
    "TextClassifier",
    "plan_chunks",
    "read_metadata",
    "sequence_lengths",
    "usable_cores",
]

#: ONNX metadata key holding `TextEncoder.to_json()`.
METADATA_ENCODER_KEY = "text_encoder"

#: ONNX metadata key set to "true" by `export.to_onnx` when it checked that
#: each row's outputs are the same on the row cut after its last word: only
#: then does the runtime skip padding.
METADATA_PADDING_FREE_KEY = "padding_free"

#: Work (elements of the largest input: rows x tokens for a text model) from
#: which a call runs on onnxruntime's intra-op threads, and from which a text
#: model's rows that are cut run as calls side by side; less runs on one
#: thread, which pays no hand-off. Measured with `python -m benchmarks.threads`
#: and on real sentences (2 cores, 2026-11-28): the intra-op threads won from
#: 160-320 tokens on idle cores (the tutorial's 8 x 40 ids: 0.24 ms against
#: 0.31) but only from 640-1280 when each call came after a pause; the bundled
#: model's 64 cut sentences (864 tokens) took 1.04 ms side by side against 1.55
#: on one thread, its 32 (476 tokens) 0.86 against 0.86; side by side lost up
#: to 1024 tokens when other processes held the cores.
PARALLEL_WORK = 512

#: Work per usable core from which rows that are not cut (a fixed-length
#: model's, or any model not found padding-free) run as independent
#: single-threaded calls of `MAX_CALL_WORK` side by side, the calling thread
#: taking its share, instead of one call on the intra-op threads. Side by side
#: won from 5120 tokens a core on the tutorial's model (1024 x 40 ids: 18.7 ms
#: against 25.1; 128 x 40: 2.70 against 2.45), and from 1024-2560 on the
#: bundled one; with two busy processes on the 2 cores, from 2560 on the
#: bundled one (128 x 40: 4.3 ms against 7.8), where an intra-op call waits
#: at every op (the tutorial's 1024 x 40: 36 ms against 70). 2048 sits
#: between them. Rows that are cut are several calls already
#: (`plan_chunks`): they run side by side from `PARALLEL_WORK` on.
SPLIT_WORK = 2048

#: Most work (rows x tokens) of one call when rows run side by side: 1024 rows
#: of 40 tokens took 19.3, 18.1, 17.9, 18.7 and 20.8 ms in calls of 320, 640,
#: 1280, 2560 and 5120 tokens: bigger calls' activations leave the caches,
#: smaller ones pay their fixed cost more often.
MAX_CALL_WORK = 1024

#: A single row of up to this many ids is checked with Python's max on a list
#: (its ids read as unsigned): at 40 ids 1.9 us between two onnxruntime calls,
#: against 4.4-4.9 us for numpy's reduction; the list costs more than numpy
#: on long rows (23 us at 640 ids).
_ROW_IDS = 64

_PROBABILITY = "probability"
_ATTENTION = "attention"

# onnxruntime's type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


# -- sessions sized to the machine ------------------------------------------------


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not Linux
        return max(os.cpu_count() or 1, 1)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The custom metadata of the ONNX file at ``path`` (producer, versions, encoder)."""
    session = open_session(path, threads=1)
    meta = session.get_modelmeta()
    return {
        "producer_name": meta.producer_name,
        "version": str(meta.version),
        **meta.custom_metadata_map,
    }


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an ONNX model.

    Attributes:
        name: the tensor's name in the graph (the key of feeds and results).
        dtype: numpy dtype name (``"float32"``, ``"int32"``, ...; ``"str"``
            for string tensors).
        shape: one entry per axis: an int for a fixed size, ``None`` for a
            symbolic one (the batch axis, a sequence length).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype} ({dims})"


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OnnxModel:
    """Any ONNX file on onnxruntime's CPU provider, with checked feeds.

    Args:
        path: the ``.onnx`` file.
        threads: most threads one call may use. ``None`` means the cores
            this process may use (`usable_cores`). A call whose work (the
            element count of its largest input: rows x tokens for a text
            model) is below `PARALLEL_WORK` runs on one thread, a larger one
            on onnxruntime's intra-op threads: threads cost more than they
            save on small calls.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: onnxruntime cannot load it, or ``threads`` is not a
            positive integer.

    One model may be shared between threads (`onnxruntime.InferenceSession.run`
    is thread-safe and the object holds no per-call state). `close` (or a
    ``with`` block) releases its sessions and thread pools.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
            raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
        self.path = Path(path)
        cores = usable_cores()
        self.threads = cores if threads is None else min(int(threads), cores)
        session = open_session(self.path, threads=1)
        self._run_one = _checked_runner(session)  # None once closed
        # Opened on first use: a session whose runs use every allowed core
        # (for big calls), and the helper threads that run independent
        # single-threaded calls beside the calling thread (`_run_many`).
        self._run_parallel = None
        self._pool = None
        self._lock = threading.Lock()
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self.inputs: tuple[TensorSpec, ...] = tuple(_spec(a) for a in session.get_inputs())
        self.outputs: tuple[TensorSpec, ...] = tuple(_spec(a) for a in session.get_outputs())
        self._input_specs = {spec.name: spec for spec in self.inputs}
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, feeds: Mapping[str, object], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            feeds: an array (or anything `numpy.asarray` takes) for every input,
                by name. Safe casts are made (float64 -> float32, int64 ->
                int32 when every value fits, any integer -> float).
            outputs: the names of the outputs wanted; ``None`` for all.

        Returns:
            The outputs as numpy arrays, by name, in the model's order.

        Raises:
            ValueError: a missing or unknown input, a wrong rank, a fixed
                dimension that does not match, or a dtype that cannot be cast
                safely; an unknown output name; a closed model. One line,
                naming the input.

        A call of `PARALLEL_WORK` or more runs on onnxruntime's intra-op
        threads (each op split across cores), which is right for any model;
        `TextClassifier`, which knows its rows are independent, also runs
        big batches as single-threaded calls side by side (`SPLIT_WORK`).
        """
        checked = self.check_feeds(feeds)
        names = self._output_names if outputs is None else self._check_outputs(outputs)
        work = max((value.size for value in checked.values()), default=0)
        return dict(zip(names, self._run_checked(names, checked, parallel=work >= PARALLEL_WORK)))

    def check_feeds(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """``feeds`` as onnxruntime takes them: checked and safely cast (see `run`).

        Raises:
            ValueError: as `run`.
        """
        if not isinstance(feeds, Mapping):
            raise ValueError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        unknown = sorted(set(feeds) - set(self._input_specs))
        if unknown:
            raise ValueError(f"unknown input {unknown[0]!r}: the model's inputs are {sorted(self._input_specs)}")
        checked = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ValueError(f"missing input {spec.name!r} ({spec})")
            checked[spec.name] = _check_feed(spec, feeds[spec.name])
        return checked

    def _run_many(self, function, items: Sequence) -> None:
        """Call ``function(item)`` for each item, side by side on up to `threads` threads.

        For independent single-threaded calls of `_run_checked`: the cores
        stay busy without onnxruntime's per-op synchronisation. The calling
        thread takes items too, beside ``threads - 1`` helpers, each taking
        the next item when done with one (so a slower core takes fewer).
        Returns when all are done; the first exception raised is raised here,
        and no item is started after it.
        """
        helpers = min(self.threads, len(items)) - 1
        if helpers < 1:
            for item in items:
                function(item)
            return
        pending = iter(items)
        lock = threading.Lock()
        failed = threading.Event()

        def take_items() -> None:
            while not failed.is_set():
                with lock:
                    item = next(pending, _NO_ITEM)
                if item is _NO_ITEM:
                    return
                try:
                    function(item)
                except BaseException:
                    failed.set()
                    raise

        executor = self._executor()
        started = [executor.submit(take_items) for _ in range(helpers)]
        try:
            take_items()
        finally:
            errors = [future.exception() for future in started]  # waits for every helper
        for error in errors:
            if error is not None:
                raise error

    def _run_checked(self, names: list[str], feeds: dict[str, np.ndarray], *, parallel: bool = False) -> list[np.ndarray]:
        """One onnxruntime run of feeds already checked (`check_feeds`): on one thread, or on the intra-op threads."""
        run = self._parallel() if parallel and self.threads > 1 else self._run_one  # None once closed
        if run is None:
            raise ValueError(f"{self!r} is closed")
        return run(names, feeds, None)

    def _check_outputs(self, outputs: Sequence[str]) -> list[str]:
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        for name in names:
            if name not in self._output_names:
                raise ValueError(f"unknown output {name!r}: the model's outputs are {self._output_names}")
        return names

    def _parallel(self):
        """The run function of the session on every allowed core (None once closed)."""
        if self._run_parallel is None:
            with self._lock:
                if self._run_parallel is None and self._run_one is not None:
                    self._run_parallel = _checked_runner(open_session(self.path, threads=self.threads))
        return self._run_parallel

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None and self._run_one is not None:
                    self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="onnx-model")
        pool = self._pool  # None once closed
        if pool is None:
            raise ValueError(f"{self!r} is closed")
        return pool

    def close(self) -> None:
        """Release the sessions and thread pools; the model cannot run afterwards."""
        with self._lock:
            self._run_one = self._run_parallel = None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, threads={self.threads})"


_NO_ITEM = object()


def _checked_runner(session):
    """``run(names, feeds, run_options)`` of ``session``, for feeds already checked by `OnnxModel.check_feeds`.

    onnxruntime's binding itself when the session exposes it: the Python
    wrapper's ``run`` checks the feed's names again, 2 us of the 48 us a
    one-sentence call of the tutorial's model takes (2026-11-28).
    """
    binding = getattr(session, "_sess", None)
    if callable(getattr(binding, "run", None)):
        return binding.run
    return lambda names, feeds, run_options: session.run(names, feeds, run_options)


def _check_feed(spec: TensorSpec, value) -> np.ndarray:
    """``value`` as an array onnxruntime takes for ``spec``, or a one-line ValueError."""
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise ValueError(f"input {spec.name!r}: not an array: {' '.join(str(error).split())}") from None
    if value.ndim != len(spec.shape):
        raise ValueError(f"input {spec.name!r}: expected rank {len(spec.shape)} ({spec}), got shape {value.shape}")
    for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
        if want is not None and want != got:
            raise ValueError(f"input {spec.name!r}: axis {axis} must be {want} ({spec}), got shape {value.shape}")
    value = _cast(spec, value)
    return value if value.flags.c_contiguous else np.ascontiguousarray(value)


def _cast(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """``value`` in ``spec.dtype`` when that loses nothing; else a one-line ValueError."""
    want, have = spec.dtype, value.dtype
    if have.name == want:
        return value
    kind = have.kind
    if want == "str":
        if kind in "UO" or (kind == "S"):
            return value.astype(object)
    elif value.size == 0 and kind in "biuf":
        return value.astype(want)
    elif want.startswith("float"):
        if kind in "fiu":  # float64 -> float32 rounds, as every float32 model does
            return value.astype(want)
    elif want.startswith(("int", "uint")):
        if kind in "iu":
            info = np.iinfo(want)
            low, high = value.min(), value.max()
            if low >= info.min and high <= info.max:
                return value.astype(want)
            bad = low if low < info.min else high
            raise ValueError(f"input {spec.name!r}: value {bad} does not fit {want}")
    elif want == "bool" and kind == "b":
        return value
    raise ValueError(f"input {spec.name!r}: cannot cast {have} to {want} safely")


# -- batching and length-bucketing: pure functions ---------------------------------


def sequence_lengths(ids: np.ndarray) -> np.ndarray:
    """One past the last nonzero id of each row of ``ids`` (0 for a row of padding only).

    Args:
        ids: integers of shape ``(n, width)``; 0 is padding.

    Returns:
        int64 array of shape ``(n,)``. Zeros between words count as words:
        a row is cut only after its last real token.
    """
    real = ids != 0
    width = ids.shape[1]
    last = width - np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), last, 0)


def plan_chunks(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_work: int = MAX_CALL_WORK,
    min_work: int = PARALLEL_WORK,
) -> list[tuple[np.ndarray, int]]:
    """Group rows into calls, each cut at its longest row: ``[(rows, length), ...]``.

    Work is rows x length, the tokens a call computes on. A batch whose
    padded work (rows x longest row) is at most ``min_work`` is one call in
    input order. Larger batches are sorted by length and cut into calls of
    similar lengths: a call ends where the length grows once it holds
    ``min_work`` (so calls stay big enough to use the threads, and their fixed
    cost stays small), and before it would exceed ``max_work``.

    Args:
        lengths: each row's length (`sequence_lengths`).
        max_work: most work of a call (a single row may exceed it).
        min_work: least work of a call before it may end at a length change.

    Returns:
        Every row index exactly once, as int64 arrays, each with the length
        its call is cut at: at least 1 and at least the longest of its rows.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    n = len(lengths)
    if n == 0:
        return []
    longest = max(int(lengths.max()), 1)
    if n * longest <= min_work:
        return [(np.arange(n), longest)]
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = np.maximum(lengths[order], 1).tolist()
    chunks = []
    start, top = 0, sorted_lengths[0]
    for i, length in enumerate(sorted_lengths):
        rows = i - start
        if rows and (
            (i - start + 1) * length > max_work
            or (length > top and rows * top >= min_work)
        ):
            chunks.append((order[start:i], top))
            start = i
        top = length
    chunks.append((order[start:], top))
    return chunks


# -- text classification --------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one text.

    Attributes:
        text: the text as given.
        label: the predicted label (the most probable one; with one sigmoid
            unit, the second label when its probability is at least 0.5).
        probability: the probability of ``label``. (Changed: `SentimentPredictor`
            used to give the probability of ``"positive"`` here whatever the
            label; that value is now ``scores["positive"]``.)
        scores: every label's probability, in the encoder's order; they sum to 1.
        attention: ``(word, weight)`` for each word the model read, in order:
            how much the sentence attends to that word (the attention rows of
            the real words averaged, over the real words only; the weights sum
            to 1). Unknown words show as ``"[UNK]"``. Empty for a text
            without any word, or a model without an ``attention`` output.
        truncated: the text had more words than the model reads (``seq_len``);
            the words after those were ignored.
    """

    text: str
    label: str
    probability: float
    scores: dict[str, float] = field(default_factory=dict, hash=False)
    attention: tuple[tuple[str, float], ...] = ()
    truncated: bool = False

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
            "scores": dict(self.scores),
            "attention": [[word, weight] for word, weight in self.attention],
            "truncated": self.truncated,
        }


class TextClassifier:
    """Label texts with an exported text model that carries its encoder.

    The model has one integer input of shape ``(batch, seq_len)`` (the
    sequence axis fixed to the encoder's ``seq_len`` or dynamic), an output
    ``probability`` of shape ``(batch, 1)`` (one sigmoid unit, two labels) or
    ``(batch, k)`` (k softmax units, the encoder's k labels), and optionally
    ``attention`` of shape ``(batch, L, L)``.

    Args:
        path: an ``.onnx`` file written by `export.to_onnx` from a model saved
            with its text encoder.
        threads: most threads a call may use; ``None`` for what is fastest
            here (see `OnnxModel`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file has no text encoder in its metadata or is not
            such a model (the message says what differs).

    A model whose metadata says ``padding_free`` (`export.to_onnx` checked
    that every output of a sentence is the same cut after its last word; the
    sentiment builder's models without Flatten are) runs each row cut after
    its last word, rows of similar lengths batched together (`plan_chunks`),
    its attention padded back with zeros: the padded run's outputs, for less
    work. Other models run their rows as given.

    How a batch runs depends on its work (rows x tokens, after cutting): under
    `PARALLEL_WORK` on one thread. Above, rows that are cut run as their
    calls side by side, one per core at a time; rows that are not run as one
    call on onnxruntime's intra-op threads, and from `SPLIT_WORK` per core as
    calls of `MAX_CALL_WORK` side by side. Safe to share between threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.model = OnnxModel(path, threads=threads)
        self.path = self.model.path
        encoder_json = self.model.metadata.get(METADATA_ENCODER_KEY)
        if encoder_json is None:
            raise ValueError(
                f"{self.path} has no text encoder in its metadata: export it with "
                "`python -m export.to_onnx` from a .keras model saved with its encoder"
            )
        try:
            self.encoder = TextEncoder.from_json(encoder_json)
        except ValueError as error:
            raise ValueError(f"{self.path}: unusable text encoder in metadata: {error}") from None
        self._seq_len, self._vocab_size = self.encoder.seq_len, self.encoder.vocab_size
        self._check_signature()

    def _check_signature(self) -> None:
        inputs = self.model.inputs
        if len(inputs) != 1 or not inputs[0].dtype.startswith(("int", "uint")) or len(inputs[0].shape) != 2:
            found = ", ".join(map(str, inputs))
            raise ValueError(f"{self.path}: expected one integer input of shape (batch, seq_len), found {found}")
        self._input = inputs[0]
        self._input_dtype = np.dtype(inputs[0].dtype)
        # The same bytes read as unsigned: a negative id reads as a huge one,
        # so one `max` checks both ends of the vocabulary.
        self._unsigned_dtype = np.dtype(f"u{self._input_dtype.itemsize}")
        length = inputs[0].shape[1]
        if length is not None and length != self.encoder.seq_len:
            raise ValueError(
                f"{self.path}: the model reads {length} tokens but its encoder writes {self.encoder.seq_len}"
            )
        self._fixed_length = length is not None
        self._one_row = (1, length) if self._fixed_length and length <= _ROW_IDS else None
        self._trims = not self._fixed_length and self.model.metadata.get(METADATA_PADDING_FREE_KEY) == "true"
        outputs = {spec.name: spec for spec in self.model.outputs}
        if _PROBABILITY not in outputs:
            raise ValueError(f"{self.path}: no output named 'probability'; found {sorted(outputs)}")
        shape, k = outputs[_PROBABILITY].shape, len(self.encoder.labels)
        width = shape[1] if len(shape) == 2 else None
        if width not in (1, k) or (width == 1 and k != 2):
            raise ValueError(
                f"{self.path}: 'probability' must be (batch, 1) for 2 labels or (batch, k) for k labels; "
                f"found shape {tuple(shape)} and {k} labels {list(self.encoder.labels)}"
            )
        self._sigmoid = width == 1
        attention = outputs.get(_ATTENTION)
        self._has_attention = attention is not None and len(attention.shape) == 3
        self._outputs = [_PROBABILITY, _ATTENTION] if self._has_attention else [_PROBABILITY]
        self._probability_only = [_PROBABILITY]

    # -- properties ---------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names, in the order of ``predict_proba``'s columns."""
        return self.encoder.labels

    @property
    def seq_len(self) -> int:
        """Most words the model reads of a text."""
        return self.encoder.seq_len

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @property
    def threads(self) -> int:
        """Most threads one call uses."""
        return self.model.threads

    # -- inference ----------------------------------------------------------

    def run_ids(self, ids) -> dict[str, np.ndarray]:
        """Run the model on encoded ids.

        Args:
            ids: integers of shape ``(n, seq_len)``, each in
                ``[0, vocab_size)`` (0 is padding). Any integer dtype is
                accepted. A model with a dynamic sequence axis accepts any width.

        Returns:
            ``{"probability": float32 (n, 1) or (n, k)}``, and ``"attention":
            float32 (n, width, width)`` when the model has it: its outputs as
            they are.

        Raises:
            ValueError: wrong dtype, shape, or an id outside the vocabulary.
        """
        # One encoded sentence, the common case of a server: its few
        # microseconds of checks are part of every call, so they are the
        # cheapest that hold (onnxruntime takes any strides, so no copy).
        if type(ids) is np.ndarray and ids.dtype is self._input_dtype:
            shape = ids.shape
            if shape == self._one_row or (
                not self._fixed_length and len(shape) == 2 and shape[0] == 1 and 0 < shape[1] <= _ROW_IDS
            ):
                # Python's max on the row's list is cheaper than numpy's
                # reductions at this size.
                row = ids[0].view(self._unsigned_dtype).tolist()
                if max(row) < self._vocab_size:
                    return self._run_row(ids, row)
        return self._run_ids(self._check_ids(ids))

    def _run_ids(self, ids: np.ndarray, *, attention: bool = True) -> dict[str, np.ndarray]:
        """`run_ids` on checked ids; ``attention=False`` asks onnxruntime for the probabilities only.

        Without attention a call skips copying out ``(rows, length, length)``
        weights and scattering them into a zero-padded ``(n, width, width)``
        array: at batch 1024 of real sentences that was 3.7 ms of the 15.5 ms
        `predict_proba` took (2026-12-03), for an output it threw away.
        """
        names = self._outputs if attention else self._probability_only
        n, width = ids.shape
        if n == 0:
            return self._empty(width, names=names)
        if n == 1:
            return self._run_row(ids, ids[0].tolist(), names)
        threads = self.model.threads
        lengths = sequence_lengths(ids) if self._trims else None
        # Rows cut after their last word: about the work left.
        work = int(lengths.sum()) + n if self._trims else n * width
        if self._trims:  # rows of similar lengths together, side by side once worth sharing
            side_by_side = threads > 1 and work >= PARALLEL_WORK
            max_work = -(-work // _calls_side_by_side(work, threads)) if side_by_side else MAX_CALL_WORK
            chunks = plan_chunks(lengths, max_work=max_work, min_work=min(PARALLEL_WORK, max_work))
            side_by_side = side_by_side and len(chunks) > 1
            if len(chunks) == 1:  # one call on every row, in order
                chunks = [(slice(None), chunks[0][1])]
        else:
            side_by_side = threads > 1 and work >= SPLIT_WORK * threads
            if side_by_side or threads == 1:  # calls of equal size
                calls = _calls_side_by_side(work, threads) if side_by_side else -(-work // MAX_CALL_WORK)
                step = -(-n // calls)
                chunks = [(slice(start, start + step), width) for start in range(0, n, step)]
            else:  # one call, its ops split across the cores when it is big enough
                chunks = [(slice(None), width)]
        feed = self._input.name
        if len(chunks) == 1 and chunks[0][1] == width:
            out = self.model._run_checked(names, {feed: ids}, parallel=ids.size >= PARALLEL_WORK)
            return dict(zip(names, out))
        results = self._empty(width, n, names=names)
        probability = results[_PROBABILITY]
        weights = results.get(_ATTENTION)

        def run(chunk):
            rows, length = chunk
            part = ids[rows]
            if length < width:
                part = np.ascontiguousarray(part[:, :length])
            parallel = not side_by_side and part.size >= PARALLEL_WORK
            out = self.model._run_checked(names, {feed: part}, parallel=parallel)
            probability[rows] = out[0]
            if weights is not None:
                weights[rows, :length, :length] = out[1]

        if side_by_side:
            self.model._run_many(run, chunks)
        else:
            for chunk in chunks:
                run(chunk)
        return results

    def _run_row(self, ids: np.ndarray, row: list[int], names: list[str] | None = None) -> dict[str, np.ndarray]:
        """One checked row, its ids as a list: the per-call overhead is what batch 1 measures, so no planning.

        ``names``: the outputs wanted, `_outputs` (all) when None.
        """
        run = self.model._run_one  # None once closed
        if run is None:
            raise ValueError(f"{self.model!r} is closed")
        if names is None:
            names = self._outputs
        if not self._trims or row[-1] != 0:  # nothing to cut
            return dict(zip(names, run(names, {self._input.name: ids}, None)))
        width, length = len(row), _row_length(row)
        out = run(names, {self._input.name: ids[:, :length]}, None)
        results = {_PROBABILITY: out[0]}
        if len(names) > 1:
            results[_ATTENTION] = attention = np.zeros((1, width, width), np.float32)
            attention[:, :length, :length] = out[1]
        return results

    def _empty(self, width: int, n: int = 0, *, names: list[str]) -> dict[str, np.ndarray]:
        k = 1 if self._sigmoid else len(self.labels)
        out = {_PROBABILITY: np.zeros((n, k), np.float32)}
        if _ATTENTION in names:
            out[_ATTENTION] = np.zeros((n, width, width), np.float32)
        return out

    def predict_proba(self, texts: str | Iterable[str]) -> np.ndarray:
        """Each label's probability per text: shape ``(n, k)``, rows summing to 1.

        Columns follow `labels`. A single string is one text. One sigmoid
        unit ``p`` gives ``[1 - p, p]``.
        """
        return self.label_scores(self._run_ids(self.encoder.encode(texts), attention=False)[_PROBABILITY])

    def classify(self, texts: str | Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(label index per text, predict_proba's (n, k) probabilities)``, without the attention.

        The label is `predict`'s (`label_indices` on the model's output), for
        callers that need labels and scores of many texts but no words.
        """
        probability = self._run_ids(self.encoder.encode(texts), attention=False)[_PROBABILITY]
        return self.label_indices(probability), self.label_scores(probability)

    def label_scores(self, probability: np.ndarray) -> np.ndarray:
        """Each label's probability from the model's own ``probability`` output (`run_ids`).

        Returns ``(n, k)``, columns in `labels` order: one sigmoid unit ``p``
        gives ``[1 - p, p]``; k softmax units are returned as they are.
        """
        if self._sigmoid:
            p = probability[:, 0]
            return np.stack([1 - p, p], axis=1)
        return probability

    def label_indices(self, probability: np.ndarray) -> np.ndarray:
        """The predicted label per row (an index into `labels`) from the model's ``probability`` output.

        One sigmoid unit picks the second label from ``p >= 0.5``; k softmax
        units pick their argmax (`export.text.label_indices`).
        """
        return label_indices(probability)

    def predict(self, texts: str | Iterable[str]) -> list[Prediction]:
        """One `Prediction` per text (a single string is one text)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = self.encoder.encode(texts)
        outputs = self._run_ids(ids)
        scores = self.label_scores(outputs[_PROBABILITY])
        best = self.label_indices(outputs[_PROBABILITY])
        labels = self.labels
        seq_len = self.seq_len
        full = ids[:, -1] != 0  # only these can have lost words
        per_word = None
        if _ATTENTION in outputs:
            # The mean attention row over each text's real words, for all texts
            # at once (one batched product instead of a slice per text). The
            # encoder writes a text's words first, so they fill its first n places.
            attention = outputs[_ATTENTION]
            words_per_row = np.count_nonzero(ids, axis=1)
            real = (np.arange(ids.shape[1]) < words_per_row[:, None]).astype(attention.dtype)
            per_word = (real[:, None, :] @ attention)[:, 0, :] / np.maximum(words_per_row, 1)[:, None]
        results = []
        for i, (text, row) in enumerate(zip(texts, ids.tolist())):
            words = self.encoder.decode(row)
            weights = ()
            if per_word is not None and words:
                # Each real query row sums to 1 over the real keys (padding
                # keys get exactly 0), so their mean does too.
                weights = tuple(zip(words, per_word[i, : len(words)].tolist()))
            row_scores = scores[i].tolist()
            label = int(best[i])
            results.append(
                Prediction(
                    text=text,
                    label=labels[label],
                    probability=row_scores[label],
                    scores=dict(zip(labels, row_scores)),
                    attention=weights,
                    truncated=bool(full[i]) and len(self.encoder.tokenize(text)) > seq_len,
                )
            )
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
        want = self._input_dtype
        if ids.dtype != want or not ids.flags.c_contiguous:
            ids = np.ascontiguousarray(ids, dtype=want)
        return ids

    def close(self) -> None:
        """Release the onnxruntime sessions and their thread pools."""
        self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.encoder!r})"


def _calls_side_by_side(work: int, threads: int) -> int:
    """How many calls ``work`` tokens make side by side: of at most `MAX_CALL_WORK`, a multiple of ``threads``.

    A multiple, so that no core is left alone with a last call.
    """
    calls = -(-work // MAX_CALL_WORK)
    return -(-calls // threads) * threads


def _row_length(row: list[int]) -> int:
    """One past the last nonzero id of ``row``; at least 1 (a call needs a column)."""
    length = len(row)
    while length > 1 and row[length - 1] == 0:
        length -= 1
    return length


class SentimentPredictor(TextClassifier):
    """The two-label case of `TextClassifier`, as before: `predict_proba` gives P(second label).

    Args and Raises: as `TextClassifier`; also ValueError when the model
    does not have exactly two labels.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        if len(self.labels) != 2:
            raise ValueError(f"{self.path}: a sentiment model has 2 labels, this one has {list(self.labels)}")

    def predict_proba(self, texts: str | Iterable[str]) -> np.ndarray:
        """Probability of the second label (``"positive"``) per text, shape ``(n,)``.

        A single string is one text.
        """
        return self._run_ids(self.encoder.encode(texts), attention=False)[_PROBABILITY][:, 0]

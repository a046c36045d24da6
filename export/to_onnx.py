"""Convert a Keras model (with its text encoder) to a verified, self-contained ONNX file.

    python -m export.to_onnx                    # the bundled pretrained model -> sentiment.onnx
    python -m export.to_onnx model.keras -o model.onnx --quantize

or from Python::

    from export.to_onnx import convert
    report = convert("model.keras", "model.onnx")
    print(report)

The conversion goes through tf2onnx on a `tf.function` with an explicit,
named input signature (Keras's own ``model.export(format="onnx")`` ignores
tf2onnx's options, names outputs poorly and checks nothing). The file is then
run on onnxruntime and compared with Keras output by output before it
replaces anything: a failed export leaves no new file and never alters an
existing one.

The written file is the portable graph as tf2onnx produces it, less the
wasted work that `export.simplify` removes with exact rewrites (it passes
`onnx.checker` and any onnxruntime build can load it); onnxruntime's own
graph optimisations are applied when a session opens, which takes a few
milliseconds for the sentiment model, so no machine-specific pre-optimised
copy is written.

TensorFlow, Keras and tf2onnx are imported on first use, so ``--help`` and
argument errors are instant.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.cli import CliError, import_training, quiet_tensorflow, run, silenced_stderr
from export.files import atomic_file
from export.runtime import METADATA_ENCODER_KEY, METADATA_PADDING_FREE_KEY
from export.session import open_session
from export.simplify import simplify

quiet_tensorflow()  # must precede the first TensorFlow import in this process

__all__ = ["ExportError", "ExportReport", "QuantizationReport", "SAMPLE_TEXTS", "convert", "main"]

DEFAULT_OPSET = 17
#: tf2onnx 1.17 with Keras 3.15 converts correctly at these opsets only.
SUPPORTED_OPSETS = range(13, 19)
DEFAULT_TOLERANCE = 1e-4

#: Verification sentences for models that carry a text encoder: ordinary
#: reviews, unknown words, an empty text (all padding) and one longer than
#: any sequence length (truncated).
SAMPLE_TEXTS = (
    "This movie was great, I loved every minute of it!",
    "A dull, boring film with terrible acting.",
    "not bad at all",
    "The plot was predictable but the cast was wonderful.",
    "worst film ever",
    "",
    "!!! ???",
    "zyxxq glorptastic unknownword",
    " ".join(["a truly wonderful and moving story that never gets old"] * 12),
)

_BATCH_AXIS = "batch"
_SEQUENCE_AXIS = "sequence"
_TIMING_ROWS = 256


class ExportError(Exception):
    """The model cannot be converted, or the ONNX file disagrees with Keras."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints and axis names) and element type of an ONNX input or output."""

    name: str
    shape: tuple
    dtype: str

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name} {self.dtype} ({dims})"


@dataclass(frozen=True)
class QuantizationReport:
    """The int8 copy (dynamic quantisation of MatMul) compared with the fp32 file."""

    path: Path
    size_bytes: int
    fp32_size_bytes: int
    fp32_ms: float
    int8_ms: float
    rows: int
    compared_output: str
    max_abs_diff: float
    label_agreement: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms else math.nan


@dataclass
class ExportReport:
    """What `convert` wrote and how well it agrees with Keras.

    ``parity`` maps each output to the max |onnxruntime - Keras| over the
    verification batch (empty when ``verify=False``).
    """

    path: Path
    model_name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    size_bytes: int
    verified: bool
    tolerance: float
    parity: dict[str, float] = field(default_factory=dict)
    verification_rows: int = 0
    verification_data: str = ""
    has_encoder: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    quantization: QuantizationReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    #: ONNX nodes as tf2onnx wrote them and after `export.simplify`.
    nodes: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"wrote {self.path} ({_size(self.size_bytes)}, opset {self.opset}) from model '{self.model_name}'"]
        if self.nodes:
            lines.append(f"  graph   {self.nodes['nodes_after']} nodes (tf2onnx wrote {self.nodes['nodes_before']})")
        lines += [f"  input   {t}" for t in self.inputs]
        lines += [f"  output  {t}" for t in self.outputs]
        lines.append(
            "  text encoder: embedded in metadata" if self.has_encoder else "  text encoder: none (ids only)"
        )
        if self.verified:
            lines.append(
                f"parity with Keras on {self.verification_rows} rows ({self.verification_data}), "
                f"tolerance {self.tolerance:g}:"
            )
            lines += [f"  {name:<12} max |diff| {diff:.3g}" for name, diff in self.parity.items()]
        else:
            lines.append("parity with Keras: not verified (--no-verify)")
        q = self.quantization
        if q is not None:
            lines.append(
                f"int8 copy {q.path} ({_size(q.size_bytes)} vs {_size(q.fp32_size_bytes)}): "
                f"{q.int8_ms:.2f} ms vs {q.fp32_ms:.2f} ms fp32 per {q.rows} rows ({q.speedup:.2f}x); "
                f"{q.compared_output} max |diff| {q.max_abs_diff:.3g}, label agreement {q.label_agreement:.1%}"
            )
        steps = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items() if k != "total")
        lines.append(f"time {self.seconds.get('total', 0.0):.2f}s ({steps})")
        return "\n".join(lines)


def convert(
    model,
    output,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    quantize: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    encoder=None,
    seed: int = 0,
    progress=None,
) -> ExportReport:
    """Convert ``model`` to ONNX at ``output``, checked against Keras.

    Args:
        model: a functional `keras.Model`, or the path of a ``.keras`` file
            (loaded with safe mode on, its text encoder included).
        output: the ``.onnx`` file to write. Its folder must exist.
        opset: ONNX opset, 13 to 18.
        verify: run the file on onnxruntime and compare every output with
            Keras; a max |diff| above ``tolerance`` fails the export.
        quantize: also write an int8 copy (dynamic quantisation of MatMul)
            beside ``output`` as ``<stem>.int8.onnx`` and report its size,
            speed and agreement with the fp32 file.
        tolerance: largest accepted max |diff| per output.
        encoder: a `export.text.TextEncoder` to embed; defaults to
            ``model.text_encoder`` (set by `keras_attn.saving.load_model`).
        seed: seed of the random verification inputs.
        progress: ``callable(str)`` told about each slow step, or None.

    Returns:
        An `ExportReport`.

    Raises:
        FileNotFoundError: ``model`` is a path that does not exist.
        ExportError: the model cannot be loaded or converted, ``output``
            cannot be written, or the verification failed. No file is left
            behind and an existing ``output`` is unchanged.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    say = progress or (lambda message: None)
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset must be between {SUPPORTED_OPSETS.start} and {SUPPORTED_OPSETS.stop - 1}, got {opset}")
    if not (tolerance >= 0):
        raise ExportError(f"tolerance must be >= 0, got {tolerance}")
    output = Path(output)
    _check_writable(output)

    if isinstance(model, (str, os.PathLike)):
        say(f"loading {model}")
        t = time.perf_counter()
        model = load_keras(model)
        seconds["load"] = time.perf_counter() - t
    keras = _import_keras()
    if not isinstance(model, keras.Model):
        raise ExportError(f"expected a keras.Model or a .keras path, got {type(model).__name__}")
    if encoder is None:
        encoder = getattr(model, "text_encoder", None)

    signature = _Signature(model)
    if encoder is not None:
        signature.check_encoder(encoder)

    say(f"converting '{model.name}' with tf2onnx (opset {opset})")
    t = time.perf_counter()
    proto = _to_proto(model, signature, opset)
    nodes = simplify(proto)
    _set_metadata(proto, model, encoder, opset, _padding_free(signature, encoder))
    try:
        _check_proto(proto)
    except Exception as error:
        raise ExportError(f"the converted graph fails onnx.checker: {_line(error)}") from error
    seconds["convert"] = time.perf_counter() - t

    quantized_path = output.with_name(f"{output.stem}.int8{output.suffix or '.onnx'}")
    try:
        with contextlib.ExitStack() as files:
            tmp = str(files.enter_context(atomic_file(output)))
            _save(proto, tmp)
            parity: dict[str, float] = {}
            rows, data_kind = 0, ""
            feeds = None
            if verify or quantize:
                feeds, data_kind = signature.sample(encoder, seed)
                rows = len(next(iter(feeds.values())))
            if verify:
                say("verifying with onnxruntime")
                t = time.perf_counter()
                parity = _verify(model, signature, tmp, feeds, tolerance)
                seconds["verify"] = time.perf_counter() - t
            quantization = None
            if quantize:
                say("quantizing MatMul to int8")
                t = time.perf_counter()
                tmp_q = str(files.enter_context(atomic_file(quantized_path)))
                quantization = _quantize(tmp, tmp_q, quantized_path, signature, encoder, seed)
                seconds["quantize"] = time.perf_counter() - t
            size = os.path.getsize(tmp)
    except ExportError:
        raise
    except OSError as error:
        raise ExportError(f"cannot write {output}: {_line(error)}") from error
    seconds["total"] = time.perf_counter() - started
    return ExportReport(
        path=output,
        model_name=model.name,
        inputs=_tensor_infos(proto.graph.input, proto.graph.initializer),
        outputs=_tensor_infos(proto.graph.output, ()),
        opset=opset,
        size_bytes=size,
        verified=verify,
        tolerance=tolerance,
        parity=parity,
        verification_rows=rows if verify else 0,
        verification_data=data_kind if verify else "",
        has_encoder=encoder is not None,
        metadata={p.key: p.value for p in proto.metadata_props if p.key != METADATA_ENCODER_KEY},
        quantization=quantization,
        seconds=seconds,
        nodes=nodes,
    )


def load_keras(path):
    """Load a ``.keras`` file with safe mode on; its encoder becomes ``model.text_encoder``.

    Raises `FileNotFoundError` or `ExportError` with a one-line reason.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ExportError(f"{path} is a folder, not a .keras file")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a Keras model: not a .keras (zip) archive, or a truncated one")
    _import_keras()
    import keras_attn  # noqa: F401 - registers ScaledDotAttention for deserialization
    from keras_attn.saving import load_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(path, safe_mode=True)
    except Exception as error:
        raise ExportError(f"cannot load {path}: {_load_reason(error)}") from error


def _load_reason(error: Exception) -> str:
    # The useful part of Keras's messages is often deep inside: search the
    # whole chain, report a short line.
    chain, seen = [], set()
    cause = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        chain.append(" ".join(str(cause).split()))
        cause = cause.__cause__ or cause.__context__
    full = " ".join(chain)
    text = _line(error)
    if "Lambda" in full and "safe_mode" in full:
        return "it contains a Lambda layer, whose code is not run with safe mode on (Lambda layers cannot be exported)"
    match = re.search(r"Could not locate (?:class|function) '([^']+)'", full)
    if match:
        return (
            f"unknown layer or object '{match.group(1)}': only standard Keras layers and "
            "ScaledDotAttention are known here (from Python, register it with "
            "@keras.saving.register_keras_serializable and import it before convert())"
        )
    if "config.json" in full:
        return "not a Keras model: the archive has no config.json"
    if isinstance(error, (zipfile.BadZipFile, EOFError)) or "zip" in text.lower():
        return f"damaged .keras archive ({text})"
    return f"{type(error).__name__}: {text}"


# -- conversion -------------------------------------------------------------


class _Signature:
    """Input specs and output names of a functional model, and how to call it."""

    def __init__(self, model):
        keras = _import_keras()
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ExportError(
                f"model '{model.name}' has no defined inputs: only functional (or built Sequential) models can be exported"
            )
        self.model = model
        self.tensors = list(inputs)
        self.names = _unique([_clean_name(getattr(t, "name", None) or f"input_{i}") for i, t in enumerate(inputs)])
        self.shapes = [tuple(t.shape) for t in inputs]
        self.dtypes = [keras.backend.standardize_dtype(t.dtype) for t in inputs]
        dynamic = [(i, a) for i, s in enumerate(self.shapes) for a, d in enumerate(s) if a > 0 and d is None]
        self.axis_names: dict[tuple[int, int], str] = {}
        for i, a in dynamic:
            self.axis_names[(i, a)] = (
                _SEQUENCE_AXIS if len(dynamic) == 1 else f"{self.names[i]}_{_SEQUENCE_AXIS}" + ("" if a == 1 else f"{a}")
            )
        self.embedding_limits = _embedding_limits(model, self.tensors)
        self.output_names = None  # known once traced

    # Calling the model with a flat list of tensors, in the order of model.inputs.
    def call(self, flat):
        keras = _import_keras()
        struct = getattr(self.model, "_inputs_struct", None)
        if struct is not None:
            try:
                packed = keras.tree.pack_sequence_as(struct, list(flat))
            except Exception:
                packed = list(flat) if len(flat) > 1 else flat[0]
        else:
            packed = list(flat) if len(flat) > 1 else flat[0]
        return self.name_outputs(self.model(packed, training=False))

    def name_outputs(self, result) -> dict:
        keras = _import_keras()
        model_names = list(getattr(self.model, "output_names", None) or [])
        if isinstance(result, dict):
            keys = list(result)
            if sorted(keys) == sorted(model_names):
                keys = model_names
            names = _unique([_clean_name(str(k)) for k in keys])
            values = [result[k] for k in keys]
        else:
            values = keras.tree.flatten(result)
            if len(model_names) != len(values):
                model_names = [f"output_{i}" for i in range(len(values))]
            names = _unique([_clean_name(n) for n in model_names])
        named = dict(zip(names, values))
        if self.output_names is None:
            self.output_names = names
        return named

    def check_encoder(self, encoder) -> None:
        if len(self.tensors) != 1 or self.dtypes[0] not in ("int32", "int64") or len(self.shapes[0]) != 2:
            raise ExportError(
                "the model carries a text encoder but does not take a single integer input of shape (batch, seq_len)"
            )
        length = self.shapes[0][1]
        if length is not None and length != encoder.seq_len:
            raise ExportError(f"the model reads {length} tokens but its text encoder writes {encoder.seq_len}")
        limit = self.embedding_limits.get(0)
        if limit is not None and encoder.vocab_size > limit:
            raise ExportError(
                f"the text encoder has {encoder.vocab_size} ids but the model's Embedding takes only {limit}"
            )

    def sample(self, encoder, seed: int, rows: int | None = None):
        """Verification feeds: encoded sample sentences, or random valid inputs."""
        if encoder is not None:
            texts = list(SAMPLE_TEXTS)
            if rows is not None:
                texts = (texts * (rows // len(texts) + 1))[:rows]
            ids = encoder.encode(texts).astype(self.dtypes[0])
            return {self.names[0]: ids}, "encoded sample sentences"
        rng = np.random.default_rng(seed)
        n = rows or 16
        length = 12  # for dynamic axes
        feeds = {}
        for i, (name, shape, dtype) in enumerate(zip(self.names, self.shapes, self.dtypes)):
            dims = [n] + [length if d is None else d for d in shape[1:]]
            if dtype.startswith(("int", "uint")):
                high = self.embedding_limits.get(i, 10)
                x = rng.integers(1 if high > 1 else 0, max(high, 1), size=dims)
                if len(dims) == 2:  # padded rows: all padding, full, random lengths
                    lengths = rng.integers(0, dims[1] + 1, size=n)
                    lengths[0], lengths[min(1, n - 1)] = 0, dims[1]
                    if n > 2:
                        lengths[2] = 1
                    x[np.arange(dims[1])[None, :] >= lengths[:, None]] = 0
                feeds[name] = x.astype(dtype)
            elif dtype == "bool":
                feeds[name] = rng.random(dims) < 0.5
            else:
                feeds[name] = rng.standard_normal(dims).astype(dtype)
        return feeds, "random inputs with padding and all-padding rows"


def _to_proto(model, signature: _Signature, opset: int):
    tf = _import_tf()
    tf2onnx = _import_tf2onnx()
    specs = [
        tf.TensorSpec(shape, tf.as_dtype(dtype), name=name)
        for name, shape, dtype in zip(signature.names, signature.shapes, signature.dtypes)
    ]

    @tf.function(input_signature=specs, autograph=False)
    def serve(*flat):
        outputs = signature.call(flat)
        return {name: tf.identity(value, name=name) for name, value in outputs.items()}

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset)
    except Exception as error:
        raise ExportError(f"tf2onnx cannot convert model '{model.name}': {_line(error)}") from error

    # Outputs in the model's order, named after it; symbolic axes named.
    by_name = {o.name: o for o in proto.graph.output}
    names = signature.output_names
    if sorted(by_name) != sorted(names):
        raise ExportError(f"unexpected ONNX outputs {sorted(by_name)}; expected {names}")
    ordered = [by_name[n] for n in names]
    copies = [type(o)() for o in ordered]
    for copy, o in zip(copies, ordered):
        copy.CopyFrom(o)
    del proto.graph.output[:]
    proto.graph.output.extend(copies)
    for i, value in enumerate(proto.graph.input):
        if value.name not in signature.names:
            continue
        index = signature.names.index(value.name)
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis == 0 and signature.shapes[index][0] is None:
                dim.dim_param = _BATCH_AXIS
            elif (index, axis) in signature.axis_names:
                dim.dim_param = signature.axis_names[(index, axis)]
    sequence_axes = _output_sequence_axes(signature)
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = _BATCH_AXIS
        for axis in sequence_axes.get(value.name, ()):
            dims[axis].dim_param = _SEQUENCE_AXIS
    return proto


def _output_sequence_axes(signature: _Signature) -> dict[str, list[int]]:
    """Output name -> its axes that follow the input's one dynamic sequence axis.

    Found by calling the model at two lengths: an axis that takes each
    length in turn is that axis (tf2onnx would leave it ``unk__N``).
    """
    if list(signature.axis_names.values()) != [_SEQUENCE_AXIS]:
        return {}
    (index, axis), = signature.axis_names
    shapes = []
    for length in (3, 5):
        feeds = []
        for i, (shape, dtype) in enumerate(zip(signature.shapes, signature.dtypes)):
            dims = [1] + [length if (i, a) == (index, axis) else d for a, d in enumerate(shape) if a > 0]
            feeds.append(np.ones(dims, dtype=dtype))
        shapes.append({name: np.shape(value) for name, value in signature.call(feeds).items()})
    return {
        name: [a for a, (d3, d5) in enumerate(zip(shape, shapes[1][name])) if a > 0 and (d3, d5) == (3, 5)]
        for name, shape in shapes[0].items()
    }


def _padding_free(signature: _Signature, encoder) -> bool:
    """Whether every output of a sentence is the same on the sentence cut after its last word.

    Checked with Keras on the encoded sample sentences: the cut outputs,
    padded back with zeros, must match the padded run. Only then may the
    runtime skip padding (models from `keras_attn.build_sentiment_model`
    without Flatten pass; a model whose padding changes the numbers does not).
    """
    if encoder is None or signature.shapes[0][1] is not None:
        return False
    ids = signature.sample(encoder, seed=0)[0][signature.names[0]]
    padded = {k: np.asarray(v) for k, v in signature.call([ids]).items()}
    for i, row in enumerate(ids):
        length = int(np.flatnonzero(row).max()) + 1 if row.any() else 1
        for name, value in signature.call([ids[i : i + 1, :length]]).items():
            value, whole = np.asarray(value), padded[name][i : i + 1]
            if value.ndim != whole.ndim:
                return False
            restored = np.zeros_like(whole)
            restored[tuple(slice(0, d) for d in value.shape)] = value
            if not np.allclose(restored, whole, rtol=0, atol=1e-5):
                return False
    return True


def _set_metadata(proto, model, encoder, opset: int, padding_free: bool) -> None:
    import onnx

    import keras_attn

    tf = _import_tf()
    keras = _import_keras()
    tf2onnx = _import_tf2onnx()
    proto.producer_name = "keras-attn"
    proto.producer_version = keras_attn.__version__
    proto.graph.name = model.name
    proto.doc_string = f"Keras model '{model.name}' exported by keras-attn {keras_attn.__version__}"
    props = {
        "keras_attn_version": keras_attn.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "tf2onnx_version": tf2onnx.__version__,
        "opset": str(opset),
        "model_name": model.name,
    }
    if encoder is not None:
        props[METADATA_ENCODER_KEY] = encoder.to_json()
    if padding_free:
        props[METADATA_PADDING_FREE_KEY] = "true"
    onnx.helper.set_model_props(proto, props)


def _check_proto(proto) -> None:
    import onnx

    onnx.checker.check_model(proto, full_check=True)


def _save(proto, path: str) -> None:
    import onnx

    onnx.save(proto, path)


# -- verification and quantisation ------------------------------------------


def _keras_outputs(signature: _Signature, feeds: dict) -> dict[str, np.ndarray]:
    keras = _import_keras()
    flat = [feeds[name] for name in signature.names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = signature.call([keras.ops.convert_to_tensor(x) for x in flat])
    return {name: np.asarray(keras.ops.convert_to_numpy(value)) for name, value in outputs.items()}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    same_nan = np.isnan(a) & np.isnan(b)
    diff = np.abs(a - b)
    diff[same_nan] = 0.0
    diff[np.isnan(diff)] = math.inf  # NaN on one side only
    return float(diff.max())


def _verify(model, signature: _Signature, path: str, feeds: dict, tolerance: float) -> dict[str, float]:
    try:
        session = open_session(path)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    except Exception as error:
        raise ExportError(f"onnxruntime cannot run the converted model: {_line(error)}") from error
    expected = _keras_outputs(signature, feeds)
    parity = {name: _max_diff(got[name], expected[name]) for name in signature.output_names}
    bad = {name: diff for name, diff in parity.items() if not diff <= tolerance}
    if bad:
        details = ", ".join(f"{name} max |diff| {diff:.3g}" for name, diff in bad.items())
        raise ExportError(f"onnxruntime disagrees with Keras above tolerance {tolerance:g}: {details}; nothing was written")
    return parity


def _quantize(tmp: str, tmp_q: str, final: Path, signature: _Signature, encoder, seed: int) -> QuantizationReport:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs its advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(tmp, tmp_q, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    except Exception as error:
        raise ExportError(f"int8 quantization failed: {_line(error)}") from error
    finally:
        root.setLevel(level)
    feeds, _ = signature.sample(encoder, seed + 1, rows=_TIMING_ROWS)
    fp32, int8 = open_session(tmp), open_session(tmp_q)
    (fp32_ms, int8_ms), (out32, out8) = _timings([fp32, int8], feeds)
    names = [o.name for o in fp32.get_outputs()]
    compared = "probability" if "probability" in names else names[0]
    a, b = out32[names.index(compared)], out8[names.index(compared)]
    if a.ndim >= 1 and a.shape[-1] > 1:
        agree = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
    else:
        agree = (a >= 0.5) == (b >= 0.5)
    return QuantizationReport(
        path=final,
        size_bytes=os.path.getsize(tmp_q),
        fp32_size_bytes=os.path.getsize(tmp),
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        rows=len(next(iter(feeds.values()))),
        compared_output=compared,
        max_abs_diff=_max_diff(a, b),
        label_agreement=float(np.mean(agree)) if agree.size else 1.0,
    )


def _timings(sessions, feeds, repeats: int = 15):
    """Best time in ms of each session on ``feeds``, runs interleaved; and each one's outputs."""
    outputs = [session.run(None, feeds) for session in sessions]  # warm-up
    best = [math.inf] * len(sessions)
    for _ in range(repeats):
        for i, session in enumerate(sessions):
            t = time.perf_counter()
            session.run(None, feeds)
            best[i] = min(best[i], time.perf_counter() - t)
    return [1000 * b for b in best], outputs


# -- files ------------------------------------------------------------------


def _check_writable(output: Path) -> None:
    folder = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise ExportError(f"cannot write {output}: it is a folder")
    if not folder.exists():
        raise ExportError(f"cannot write {output}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ExportError(f"cannot write {output}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {output}: folder {folder} is not writable")


# -- helpers ----------------------------------------------------------------


def _embedding_limits(model, inputs) -> dict[int, int]:
    """Input index -> smallest ``input_dim`` of the Embeddings its ids reach."""
    keras = _import_keras()
    index = {id(t): i for i, t in enumerate(inputs)}
    limits: dict[int, int] = {}
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, keras.layers.Embedding):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            stack, seen = list(getattr(node, "input_tensors", [])), set()
            while stack:
                tensor = stack.pop()
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                if id(tensor) in index:
                    i = index[id(tensor)]
                    limits[i] = min(limits.get(i, layer.input_dim), layer.input_dim)
                    continue
                # Walk back through integer tensors only (casts, slices...).
                if not str(getattr(tensor, "dtype", "")).startswith(("int", "uint")):
                    continue
                history = getattr(tensor, "_keras_history", None)
                if history is None:
                    continue
                operation, node_index = history[0], history[1]
                nodes = getattr(operation, "_inbound_nodes", [])
                if node_index < len(nodes):
                    stack.extend(getattr(nodes[node_index], "input_tensors", []))
    return limits


def _tensor_infos(values, initializers) -> list[TensorInfo]:
    import onnx

    skip = {t.name for t in initializers}
    infos = []
    for value in values:
        if value.name in skip:
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        infos.append(TensorInfo(value.name, shape, dtype))
    return infos


def _clean_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name).split(":")[0])
    return name if name and re.match(r"[A-Za-z0-9.]", name) else f"x{name}"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        candidate = name
        while candidate in seen:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
        seen.setdefault(candidate, 0)
        seen.setdefault(name, 0)
        result.append(candidate)
    return result


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _import_tf():
    return import_training("tensorflow")


def _import_keras():
    return import_training("keras")


def _import_tf2onnx():
    _import_tf()
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        tf2onnx.logging.set_level(logging.ERROR)
    return tf2onnx


# -- command line -----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.to_onnx",
        description=(
            "Convert a Keras model (.keras, with its text encoder) to a self-contained ONNX file,\n"
            "then check it on onnxruntime against Keras. Without MODEL, converts the bundled\n"
            "pretrained sentiment model (keras_attn/pretrained/sentiment.keras). The file is\n"
            "written atomically: on any failure nothing is left and an existing file is unchanged."
        ),
        epilog=(
            "examples:\n"
            "  python -m export.to_onnx                        # -> ./sentiment.onnx\n"
            "  python -m export.to_onnx my.keras -o my.onnx --quantize\n"
            "then: python -m export.predict sentiment.onnx \"what a great film\""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help="the .keras file (default: the bundled pretrained model)")
    parser.add_argument(
        "-o", "--output", metavar="OUTPUT", help="the .onnx file to write (default: <MODEL stem>.onnx in the current folder)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=list(SUPPORTED_OPSETS),
        metavar="N",
        help=f"ONNX opset, {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (default: {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--quantize",
        action="store_true",
        help="also write an int8 copy (dynamic quantization of MatMul) as <OUTPUT stem>.int8.onnx",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-Keras check (not advised)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="X",
        help=f"largest accepted max |diff| per output (default: {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks, library logs and progress even when not on a terminal"
    )
    return parser


def _bundled_model() -> Path:
    try:
        from keras_attn.pretrained import PATH
    except ImportError as error:
        raise CliError(f"no bundled pretrained model in this installation ({error}); pass MODEL") from None
    path = Path(PATH)
    if not path.is_file():
        raise CliError(f"the bundled pretrained model is missing: {path}; pass MODEL")
    return path


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.debug:
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        # Level 2 still lets through C++ "errors" that are only notices (e.g.
        # oneDNN's DT_BOOL fallback for LSTM masks); real failures reach us as
        # Python exceptions. --debug keeps the caller's level.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if not (args.tolerance >= 0):
        raise CliError(f"--tolerance must be >= 0, got {args.tolerance}")
    source = Path(args.model) if args.model else None
    if source is not None and not source.exists():
        raise CliError(f"no such file: {source}")
    if source is not None and source.is_dir():
        raise CliError(f"{source} is a folder, not a .keras file")
    if source is not None and not zipfile.is_zipfile(source):
        raise CliError(f"{source} is not a Keras model: not a .keras (zip) archive, or a truncated one")
    output = Path(args.output) if args.output else None
    if output is not None:
        _check_writable(output)  # fail before the slow imports
    started = time.perf_counter()
    # Progress lines on an interactive terminal (or with --debug) only, so a
    # failure in a script or CI log is exactly one "error:" line.
    chatty = args.debug or sys.stderr.isatty()

    def progress(message: str) -> None:
        if chatty:
            print(f"{message}...", file=sys.stderr, flush=True)

    progress("loading TensorFlow")
    with silenced_stderr(not args.debug):
        _import_tf2onnx()
        _import_keras()
    if source is None:
        source = _bundled_model()
    if output is None:
        output = Path(f"{source.stem}.onnx")
        _check_writable(output)
    report = convert(
        source,
        output,
        opset=args.opset,
        verify=not args.no_verify,
        quantize=args.quantize,
        tolerance=args.tolerance,
        progress=progress,
    )
    print(report)
    print(f"wall time {time.perf_counter() - started:.2f}s including TensorFlow start-up")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

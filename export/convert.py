"""Convert a Keras model (with its text encoder) to a verified, self-contained ONNX file.

    from export.convert import convert
    report = convert("model.keras", "model.onnx")   # or convert(model, "model.onnx")
    print(report)

The model's `export.signature.ModelSignature` is computed first and fixes the
file's input and output names, order and named axes. The model is then
traced as a `tf.function` with that input signature and converted by
tf2onnx; the graph is repaired where tf2onnx 1.17 falls short with Keras 3
(see `_to_proto`), simplified and given stable names by `export.simplify`
(the same model gives the same bytes) and its metadata, written to a temporary
file and checked by `export.validate.validate` on onnxruntime before it
replaces anything: a failed export leaves no new file and never alters an
existing one.

The written file is the portable graph (it passes ``onnx.checker``; any
onnxruntime build can load it); onnxruntime's own graph optimisations are
applied when a session opens, so no machine-specific copy is written.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.cli import one_line
from export.errors import ExportError, ParityError, UnsupportedLayerError
from export.files import atomic_file
from export.loading import import_tf2onnx, load_keras
from export.quantize import QuantizationReport, quantize as quantize_file
from export.runtime import METADATA_ENCODER_KEY, METADATA_PADDING_FREE_KEY
from export.signature import ModelSignature, TensorSpec, tensorflow_keras
from export.simplify import simplify, stable_names
from export.validate import DEFAULT_ATOL, SAMPLE_TEXTS, sample_inputs, validate

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "SUPPORTED_OPSETS",
    "ExportReport",
    "convert",
]

DEFAULT_OPSET = 17
#: tf2onnx 1.17 with Keras 3.15 converts correctly at these opsets only.
SUPPORTED_OPSETS = range(13, 19)
DEFAULT_TOLERANCE = DEFAULT_ATOL
#: Rows of the int8 copy's timing batch.
QUANTIZATION_ROWS = 256

#: Lookup layers whose tables become onnx-ml ``LabelEncoder`` nodes (keys to
#: ``int`` indices, one out-of-vocabulary index).
_LOOKUP_LAYERS = ("StringLookup", "IntegerLookup")
#: Layers refused up front, with what to do instead: tf2onnx cannot read
#: their TensorFlow tables or hash their out-of-vocabulary keys.
_TOKENIZE_FIRST = "tokenize before the model (export.text.TextEncoder embeds its vocabulary in the file)"


@dataclass
class ExportReport:
    """What `convert` wrote and how well it agrees with Keras.

    ``parity`` maps each output to the max |onnxruntime - Keras| over the
    verification runs (empty when ``verify=False``).
    """

    path: Path
    model_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
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
    model_or_path,
    output,
    *,
    opset: int | None = None,
    signature: ModelSignature | None = None,
    encoder=None,
    verify: bool = True,
    quantize: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    progress=None,
) -> ExportReport:
    """Convert a Keras model to ONNX at ``output``, checked against Keras.

    Args:
        model_or_path: a `keras.Model` (functional, Sequential, or a
            subclassed model that has been called), or the path of a
            ``.keras`` file (loaded with safe mode on, its text encoder
            included; custom classes must be registered first).
        output: the ``.onnx`` file to write. Its folder must exist.
        opset: ONNX opset, 13 to 18 (default 17).
        signature: the model's `ModelSignature` (default: computed with
            `ModelSignature.from_keras`).
        encoder: a `export.text.TextEncoder` to embed; defaults to
            ``model.text_encoder``. Ignored when ``signature`` is given.
        verify: run `export.validate.validate` on the file (two batch sizes,
            two lengths of a variable axis) before it replaces anything.
        quantize: also write an int8 copy (dynamic quantisation of MatMul)
            beside ``output`` as ``<stem>.int8.onnx`` and report its size,
            speed and agreement with the fp32 file.
        tolerance: largest accepted max |diff| per output.
        seed: seed of the random verification inputs.
        progress: ``callable(str)`` told about each slow step, or None.

    Returns:
        An `ExportReport` (its ``path`` is ``output``).

    Raises:
        FileNotFoundError: ``model_or_path`` is a path that does not exist.
        UnbuiltModelError: a subclassed model that was never called.
        UnsupportedLayerError: the model holds a layer that cannot be
            converted (the message names it and says what to do instead).
        ExtraInputError: the converted graph needs more inputs than the model.
        ParityError: onnxruntime disagrees with Keras above ``tolerance``.
        ExportError: any other reason the model cannot be loaded, converted
            or written. In every case no file is left behind and an existing
            ``output`` is unchanged.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    say = progress or (lambda message: None)
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset must be between {SUPPORTED_OPSETS.start} and {SUPPORTED_OPSETS.stop - 1}, got {opset}")
    if not (tolerance >= 0):
        raise ExportError(f"tolerance must be >= 0, got {tolerance}")
    output = Path(output)
    check_writable(output)

    model = model_or_path
    if isinstance(model, (str, os.PathLike)):
        say(f"loading {model}")
        t = time.perf_counter()
        model = load_keras(model)
        seconds["load"] = time.perf_counter() - t
    keras = tensorflow_keras()
    if not isinstance(model, keras.Model):
        raise ExportError(f"expected a keras.Model or a .keras path, got {type(model).__name__}")
    _check_layers(model)
    if signature is None:
        signature = ModelSignature.from_keras(model, encoder=encoder)
    encoder = signature.encoder

    say(f"converting '{model.name}' with tf2onnx (opset {opset})")
    t = time.perf_counter()
    proto = _to_proto(model, signature, opset)
    nodes = simplify(proto)
    stable_names(proto)
    _set_metadata(proto, model, encoder, opset, _padding_free(model, signature))
    try:
        import onnx

        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:
        raise ExportError(f"the converted graph fails onnx.checker: {one_line(error)}") from error
    seconds["convert"] = time.perf_counter() - t

    quantized_path = output.with_name(f"{output.stem}.int8{output.suffix or '.onnx'}")
    verification = None
    quantization = None
    try:
        with atomic_file(output) as tmp:
            _save(proto, tmp)
            if verify:
                say("verifying with onnxruntime")
                t = time.perf_counter()
                # With an encoder: the sample sentences, whole and one alone.
                sizes = (1, len(SAMPLE_TEXTS)) if encoder is not None else (1, 16)
                try:
                    verification = validate(model, tmp, atol=tolerance, batch_sizes=sizes, signature=signature, seed=seed)
                except ParityError as error:
                    raise ParityError(f"{error}; nothing was written", error.parity) from error
                seconds["verify"] = time.perf_counter() - t
            if quantize:
                say("quantizing MatMul to int8")
                t = time.perf_counter()
                feeds, _ = sample_inputs(signature, rows=QUANTIZATION_ROWS, seed=seed + 1)
                quantization = quantize_file(tmp, quantized_path, feeds=feeds)
                seconds["quantize"] = time.perf_counter() - t
            size = os.path.getsize(tmp)
    except ExportError:
        raise
    except OSError as error:
        raise ExportError(f"cannot write {output}: {one_line(error)}") from error
    seconds["total"] = time.perf_counter() - started
    return ExportReport(
        path=output,
        model_name=model.name,
        inputs=list(signature.inputs),
        outputs=list(signature.outputs),
        opset=opset,
        size_bytes=size,
        verified=verify,
        tolerance=tolerance,
        parity=verification.parity if verification else {},
        verification_rows=verification.rows if verification else 0,
        verification_data=verification.data if verification else "",
        has_encoder=encoder is not None,
        metadata={p.key: p.value for p in proto.metadata_props if p.key != METADATA_ENCODER_KEY},
        quantization=quantization,
        seconds=seconds,
        nodes=nodes,
    )


def _check_layers(model) -> None:
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = type(layer).__name__
        reason = None
        if kind == "TextVectorization":
            reason = _TOKENIZE_FIRST
        elif kind in _LOOKUP_LAYERS:
            if layer.output_mode != "int" or layer.invert or layer.num_oov_indices != 1:
                reason = (
                    "only output_mode='int', invert=False and num_oov_indices=1 convert "
                    f"(this one has output_mode={layer.output_mode!r}, invert={layer.invert}, "
                    f"num_oov_indices={layer.num_oov_indices}); map keys to indices before the model instead"
                )
        if reason is not None:
            raise UnsupportedLayerError(f"layer '{layer.name}' ({kind}) cannot be exported to ONNX: {reason}")


# -- conversion -------------------------------------------------------------


def _to_proto(model, signature: ModelSignature, opset: int):
    """tf2onnx's graph of ``model``, its inputs and outputs those of ``signature``.

    Four gaps of tf2onnx 1.17 with Keras 3 are closed here:
    - TensorFlow's ``Erfc`` (exact gelu) has no handler: it becomes ``1 - Erf``;
    - tensors a traced layer captures (an adapted Normalization's mean and
      variance) become graph inputs: they are frozen into initializers;
    - TimeDistributed over a variable time axis traces to a vectorized map
      that becomes a failing ONNX Loop: it is traced as one call of its
      layer on (batch x time) rows instead, as Keras 2 did;
    - StringLookup / IntegerLookup tables are TensorFlow resources tf2onnx
      cannot read from a traced function: they become onnx-ml LabelEncoders.
    """
    tensorflow_keras()
    import tensorflow as tf

    tf2onnx = import_tf2onnx()
    specs = [tf.TensorSpec(_tf_shape(t.shape), tf.as_dtype(t.dtype), name=t.name) for t in signature.inputs]

    @tf.function(input_signature=specs, autograph=False)
    def serve(*flat):
        outputs = signature.call(model, dict(zip(signature.input_names, flat)))
        return {name: tf.identity(value, name=name) for name, value in outputs.items()}

    try:
        with warnings.catch_warnings(), _time_distributed_as_reshape():
            warnings.simplefilter("ignore")
            concrete = serve.get_concrete_function(*specs)
            tables = _lookup_tables(model, concrete)
            handlers = {"Erfc": (_erfc_as_erf, [])}
            extra = None
            if tables:
                handlers["LookupTableFindV2"] = (lambda ctx, node, name, args: _lookup_as_label_encoder(ctx, node, tables), [])
                extra = [_onnx_ml_opset()]
            proto, _ = tf2onnx.convert.from_function(
                serve, input_signature=specs, opset=opset, custom_op_handlers=handlers, extra_opset=extra
            )
    except Exception as error:
        raise ExportError(f"tf2onnx cannot convert model '{model.name}': {one_line(error)}") from error
    _freeze_captures(proto, concrete, signature)

    # Outputs in the signature's order; every axis named as the signature says.
    by_name = {o.name: o for o in proto.graph.output}
    if sorted(by_name) != sorted(signature.output_names):
        raise ExportError(f"unexpected ONNX outputs {sorted(by_name)}; expected {signature.output_names}")
    ordered = [by_name[n] for n in signature.output_names]
    copies = [copy.deepcopy(o) for o in ordered]
    del proto.graph.output[:]
    proto.graph.output.extend(copies)
    for value, spec in zip(proto.graph.output, signature.outputs):
        _name_axes(value, spec)
    for value in proto.graph.input:
        _name_axes(value, signature.inputs[signature.input_names.index(value.name)])
    return proto


def _tf_shape(shape) -> list:
    return [None if isinstance(d, str) else d for d in shape]


def _name_axes(value, spec: TensorSpec) -> None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):  # tf2onnx gives none after some custom handlers
        for _ in spec.shape:
            tensor_type.shape.dim.add()
    dims = tensor_type.shape.dim
    if len(dims) != len(spec.shape):
        return
    for dim, want in zip(dims, spec.shape):
        if isinstance(want, str):
            dim.dim_param = want
        elif not dim.HasField("dim_value"):
            dim.dim_value = want


def _erfc_as_erf(ctx, node, name, args):
    """tf2onnx handler for TensorFlow's ``Erfc``: ``1 - Erf(x)`` (ONNX has Erf, not Erfc)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    node.type = "Erf"
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    ctx.insert_new_node_on_output(
        "Sub", node.output[0], inputs=[one.output[0], node.output[0]], name=utils.make_name(f"{node.name}_erfc")
    )


def _onnx_ml_opset():
    from onnx import helper

    return helper.make_opsetid("ai.onnx.ml", 2)


def _lookup_tables(model, concrete) -> dict:
    """Captured table handle (graph tensor name) -> (keys, values) of the StringLookup / IntegerLookup
    it belongs to, and captured constant -> its value; empty if the model has no lookup."""
    import tensorflow as tf

    tables = {}
    handles = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        table = getattr(layer, "lookup_table", None)
        if type(layer).__name__ in _LOOKUP_LAYERS and table is not None:
            handles[id(table.resource_handle)] = table
    for external, internal in concrete.graph.captures:
        table = handles.get(id(external))
        if table is not None:
            keys, values = table.export()
            tables[internal.name] = (keys.numpy(), values.numpy())
        elif hasattr(external, "numpy") and external.dtype != tf.resource:
            tables[internal.name] = external.numpy()  # the lookups' default values are captured too
    return tables if any(isinstance(v, tuple) for v in tables.values()) else {}


def _lookup_as_label_encoder(ctx, node, tables) -> None:
    """tf2onnx handler for ``LookupTableFindV2`` on a Keras lookup layer's table: onnx-ml ``LabelEncoder``."""
    from onnx import TensorProto

    keys, values = tables[node.input[0]]
    default = int(tables[node.input[2]])
    source, outputs, name = node.input[1], list(node.output), node.name
    shape = ctx.get_shape(source)
    ctx.remove_node(node.name)
    attr = {"values_int64s": [int(v) for v in values], "default_int64": default}
    if keys.dtype.kind in "SOU":
        attr["keys_strings"] = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in keys]
    else:
        attr["keys_int64s"] = [int(k) for k in keys]
    ctx.make_node(
        "LabelEncoder", [source], outputs=outputs, name=name, domain="ai.onnx.ml", attr=attr,
        shapes=[shape], dtypes=[TensorProto.INT64],
    )


def _freeze_captures(proto, concrete, signature: ModelSignature) -> None:
    """Turn the graph inputs tf2onnx made of captured constants into initializers.

    Raises `ExtraInputError` (through `export.validate.check_inputs`) if
    inputs other than the model's remain.
    """
    import tensorflow as tf
    from onnx import numpy_helper

    from export.validate import check_inputs

    captured = {}
    for external, internal in concrete.graph.captures:
        if internal.dtype != tf.resource and hasattr(external, "numpy"):
            captured[internal.name] = external.numpy()
    used = {name for node in proto.graph.node for name in node.input}
    keep = []
    for value in proto.graph.input:
        if value.name in signature.input_names:
            keep.append(value)
        elif value.name in captured:
            proto.graph.initializer.append(numpy_helper.from_array(np.asarray(captured[value.name]), value.name))
        elif value.name in used:
            keep.append(value)
        # else: a captured table handle the lookup's LabelEncoder replaced; nothing reads it
    if len(keep) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
    check_inputs(signature, [v.name for v in proto.graph.input])


@contextlib.contextmanager
def _time_distributed_as_reshape():
    """While tracing, TimeDistributed runs its layer once on (batch x time) rows."""
    import keras
    import tensorflow as tf

    original = keras.layers.TimeDistributed.call

    def call(self, inputs, training=None, mask=None):
        shape = tf.shape(inputs)
        rows = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
        kwargs = {}
        if self.layer._call_has_mask_arg and mask is not None:
            kwargs["mask"] = tf.reshape(mask, tf.concat([[-1], tf.shape(mask)[2:]], axis=0))
        if self.layer._call_has_training_arg:
            kwargs["training"] = training
        result = self.layer.call(rows, **kwargs)
        return tf.reshape(result, tf.concat([shape[:2], tf.shape(result)[1:]], axis=0))

    keras.layers.TimeDistributed.call = call
    try:
        yield
    finally:
        keras.layers.TimeDistributed.call = original


def _padding_free(model, signature: ModelSignature) -> bool:
    """Whether every output of a sentence is the same on the sentence cut after its last word.

    Checked with Keras on the encoded sample sentences: the cut outputs,
    padded back with zeros, must match the padded run. Only then may the
    runtime skip padding (models from `keras_attn.build_sentiment_model`
    without Flatten pass; a model whose padding changes the numbers does not).
    """
    if signature.encoder is None or not isinstance(signature.inputs[0].shape[1], str):
        return False
    name = signature.input_names[0]
    ids = sample_inputs(signature, rows=len(SAMPLE_TEXTS))[0][name]
    padded = {k: np.asarray(v) for k, v in signature.call(model, {name: ids}).items()}
    for i, row in enumerate(ids):
        length = int(np.flatnonzero(row).max()) + 1 if row.any() else 1
        for output, value in signature.call(model, {name: ids[i : i + 1, :length]}).items():
            value, whole = np.asarray(value), padded[output][i : i + 1]
            if value.ndim != whole.ndim:
                return False
            restored = np.zeros_like(whole)
            restored[tuple(slice(0, d) for d in value.shape)] = value
            if not np.allclose(restored, whole, rtol=0, atol=1e-5):
                return False
    return True


def _set_metadata(proto, model, encoder, opset: int, padding_free: bool) -> None:
    import onnx
    import tensorflow as tf

    import keras_attn

    keras = tensorflow_keras()
    tf2onnx = import_tf2onnx()
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


def _save(proto, path) -> None:
    import onnx

    onnx.save(proto, str(path))


# -- files and helpers --------------------------------------------------------


def check_writable(output: Path) -> None:
    """Raise `ExportError` unless ``output`` can be written (its folder exists, is writable)."""
    output = Path(output)
    folder = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise ExportError(f"cannot write {output}: it is a folder")
    if not folder.exists():
        raise ExportError(f"cannot write {output}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ExportError(f"cannot write {output}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {output}: folder {folder} is not writable")


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"

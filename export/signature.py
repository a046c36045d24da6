"""What an exported model takes and gives, computed up front from the Keras model.

    from export.signature import ModelSignature
    signature = ModelSignature.from_keras(model)
    signature.inputs    # (TensorSpec('tokens', 'int32', ('batch', 'sequence')),)
    signature.outputs   # (TensorSpec('attention', ...), TensorSpec('probability', 'float32', ('batch', 1)))

The signature fixes the ONNX file's input and output names, their order and
their named symbolic axes before anything is traced, as HF optimum's
``OnnxConfig`` does: conversion (`export.convert`) and validation
(`export.validate`) both read it and neither learns anything the other
needs. It also knows how to call the Keras model with named arrays and how
to name what comes back.

Keras is always loaded on the TensorFlow backend here, whatever
``KERAS_BACKEND`` says: tf2onnx converts TensorFlow graphs, and a ``.keras``
file saved under JAX or PyTorch holds the same weights.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from export.cli import import_training
from export.errors import ExportError, UnbuiltModelError

__all__ = ["BATCH_AXIS", "SEQUENCE_AXIS", "ModelSignature", "TensorSpec", "tensorflow_keras"]

#: Name of the first (batch) axis of every input and output.
BATCH_AXIS = "batch"
#: Name of an input's one variable axis after the batch, and of the output axes that follow it.
SEQUENCE_AXIS = "sequence"


def tensorflow_keras():
    """Import Keras on the TensorFlow backend and return the `keras` module.

    Sets ``KERAS_BACKEND=tensorflow`` for this process if Keras is not
    imported yet (a user's ``KERAS_BACKEND=jax`` does not stop an export).

    Raises:
        ModuleNotFoundError: TensorFlow or Keras is not installed (the message
            names the ``[train]`` extra).
        ExportError: Keras was already imported on another backend in this
            process (a backend cannot change once Keras is loaded).
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import_training("tensorflow")  # first, with its start-up lines silenced
    keras = import_training("keras")

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(
            f"Keras runs on the {backend} backend in this process and the exporter needs TensorFlow: "
            "save the model (model.save('model.keras')) and run `python -m export.to_onnx model.keras`, "
            "which loads it with TensorFlow whatever KERAS_BACKEND says"
        )
    return keras


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one ONNX input or output.

    ``shape`` holds an int for a fixed axis and a name (``"batch"``,
    ``"sequence"``, ...) for a variable one.
    """

    name: str
    dtype: str
    shape: tuple

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name} {self.dtype} ({dims})"


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of the ONNX file a Keras model becomes, in order.

    Attributes:
        inputs: one `TensorSpec` per model input, in the model's order.
        outputs: one `TensorSpec` per model output, in the model's order.
        input_structure: how the model takes its inputs: the input names
            laid out as the model's call expects them (a name, a list or a
            dict of names).
        encoder: the `export.text.TextEncoder` embedded as metadata, or None.
        id_limits: input name -> ``input_dim`` of the smallest Embedding its
            ids reach (valid ids are below it).
        keys: input name -> the vocabulary of the StringLookup or
            IntegerLookup that reads it (validation mixes these with
            unknown keys).
    """

    inputs: tuple
    outputs: tuple
    input_structure: object
    encoder: object = None
    id_limits: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        """The ONNX file's input names, in order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The ONNX file's output names, in order."""
        return [t.name for t in self.outputs]

    @classmethod
    def from_keras(cls, model, *, encoder=None) -> ModelSignature:
        """The signature of a built Keras model.

        Args:
            model: a functional or Sequential model, or a subclassed model
                that has been called (or built) at least once.
            encoder: the text encoder to embed; defaults to
                ``model.text_encoder`` (set by `keras_attn.saving.load_model`).

        Returns:
            A `ModelSignature`; output axes that follow the input's one
            variable axis are named ``sequence`` (found by calling the model
            at two lengths).

        Raises:
            UnbuiltModelError: a subclassed model never called or built.
            ExportError: not a Keras model, or ``encoder`` does not fit its input.
        """
        keras = tensorflow_keras()
        if not isinstance(model, keras.Model):
            raise ExportError(f"expected a keras.Model or a .keras path, got {type(model).__name__}")
        structure, specs = _input_specs(model, keras)
        if encoder is None:
            encoder = getattr(model, "text_encoder", None)
        limits = _embedding_limits(model, keras)
        id_limits = {specs[i].name: limit for i, limit in limits.items()}
        keys = _lookup_keys(model, specs)
        partial = cls(tuple(specs), (), structure, encoder, id_limits, keys)
        if encoder is not None:
            partial.check_encoder(encoder)
        return cls(tuple(specs), tuple(_output_specs(model, partial, keras)), structure, encoder, id_limits, keys)

    def call(self, model, feeds: dict) -> dict:
        """Run ``model`` on ``feeds`` (input name -> array or tensor); outputs by name, in order."""
        keras = tensorflow_keras()
        packed = keras.tree.map_structure(lambda name: feeds[name], self.input_structure)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = model(packed, training=False)
        return _name_outputs(result, model, keras, self.input_names)

    def check_encoder(self, encoder) -> None:
        """Check that ``encoder``'s ids fit the model's one integer input.

        Raises:
            ExportError: the model does not take a single (batch, seq_len)
                integer input, its length differs from the encoder's, or its
                Embedding has fewer rows than the encoder has ids.
        """
        if len(self.inputs) != 1 or self.inputs[0].dtype not in ("int32", "int64") or len(self.inputs[0].shape) != 2:
            raise ExportError(
                "the model carries a text encoder but does not take a single integer input of shape (batch, seq_len)"
            )
        length = self.inputs[0].shape[1]
        if isinstance(length, int) and length != encoder.seq_len:
            raise ExportError(f"the model reads {length} tokens but its text encoder writes {encoder.seq_len}")
        limit = self.id_limits.get(self.inputs[0].name)
        if limit is not None and encoder.vocab_size > limit:
            raise ExportError(
                f"the text encoder has {encoder.vocab_size} ids but the model's Embedding takes only {limit}"
            )

    def variable_axes(self) -> list[tuple[str, int]]:
        """(input name, axis) of every variable axis other than the batch."""
        return [(t.name, a) for t in self.inputs for a, d in enumerate(t.shape) if a > 0 and isinstance(d, str)]


# -- inputs -----------------------------------------------------------------


def _input_specs(model, keras):
    inputs = getattr(model, "inputs", None) if model.built else None
    if inputs:
        tensors = list(inputs)
        names = _unique([_input_name(t, i, len(tensors)) for i, t in enumerate(tensors)])
        by_id = {id(t): n for t, n in zip(tensors, names)}
        struct = getattr(model, "_inputs_struct", None)
        structure = keras.tree.map_structure(lambda t: by_id[id(t)], struct) if struct is not None else None
        if structure is None or sorted(keras.tree.flatten(structure)) != sorted(names):
            structure = names if len(names) > 1 else names[0]
        shapes = [tuple(t.shape) for t in tensors]
        dtypes = [keras.backend.standardize_dtype(t.dtype) for t in tensors]
    else:
        structure, names, shapes, dtypes = _subclassed_inputs(model, keras)
    variable = [(i, a) for i, s in enumerate(shapes) for a, d in enumerate(s) if a > 0 and d is None]
    specs = []
    for i, (name, shape, dtype) in enumerate(zip(names, shapes, dtypes)):
        dims = []
        for a, d in enumerate(shape):
            if a == 0:
                dims.append(BATCH_AXIS if d is None else d)
            elif d is None:
                dims.append(SEQUENCE_AXIS if len(variable) == 1 else f"{name}_{SEQUENCE_AXIS}" + ("" if a == 1 else f"{a}"))
            else:
                dims.append(int(d))
        specs.append(TensorSpec(name, dtype, tuple(dims)))
    return structure, specs


def _input_name(tensor, index: int, count: int) -> str:
    """The input's own name; ``input`` (``input_<i>``) for one Keras numbered itself (``keras_tensor_104``)."""
    name = getattr(tensor, "name", None) or ""
    if not name or re.fullmatch(r"keras_tensor(_\d+)?", name):
        return "input" if count == 1 else f"input_{index}"
    return clean_name(name)


def _subclassed_inputs(model, keras):
    """A subclassed model's inputs, from the shapes Keras recorded at its first call or build."""
    shapes_dict = getattr(model, "_build_shapes_dict", None) if model.built else None
    if not shapes_dict:
        raise UnbuiltModelError(
            f"model '{model.name}' ({type(model).__name__}) has never been called, so its inputs are unknown: "
            "call it once on a batch (model(x)) or build it (model.build(input_shape)) before converting"
        )
    # Token models start with an Embedding: their inputs are ids, not floats.
    first = next(iter(model._flatten_layers(include_self=False, recursive=True)), None)
    dtype = "int32" if isinstance(first, keras.layers.Embedding) else keras.backend.standardize_dtype(model.input_dtype)

    def is_shape(value):
        return isinstance(value, (tuple, list)) and all(isinstance(d, (int, type(None))) for d in value)

    names, shapes = [], []

    def visit(value, name):
        if is_shape(value):
            names.append(clean_name(name))
            shapes.append((None, *tuple(value)[1:]))
            return names[-1]
        if isinstance(value, dict):
            return {k: visit(v, str(k)) for k, v in value.items()}
        return [visit(v, f"{name}_{i}") for i, v in enumerate(value)]

    structure = {key: visit(value, "inputs" if key == "input_shape" else key) for key, value in shapes_dict.items()}
    if len(structure) != 1:
        raise ExportError(f"model '{model.name}' takes several call arguments ({', '.join(structure)}); pass them as one")
    structure = next(iter(structure.values()))
    return structure, names, shapes, [dtype] * len(names)


def _embedding_limits(model, keras) -> dict[int, int]:
    """Input index -> smallest ``input_dim`` of the Embeddings that read its values (functional models).

    An Embedding reads an input when its ids are computed from the input's
    values (the input itself, a cast, a slice, a lookup...). One whose ids
    come from the input's shape only (learned positions: ``arange``,
    ``cumsum(ones_like(tokens))``, a custom layer) has its own, smaller range
    and must not limit the input's ids: such ids are told apart by running
    their subgraph on two draws of the input's values.
    """
    inputs = list(getattr(model, "inputs", None) or []) if model.built else []
    index = {id(t): i for i, t in enumerate(inputs)}
    limits: dict[int, int] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.Embedding):
            continue
        if not index:  # subclassed: its ids feed its Embedding
            limits[0] = min(limits.get(0, layer.input_dim), layer.input_dim)
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for ids in getattr(node, "input_tensors", []):
                for i in _inputs_reached(ids, index):
                    if id(ids) == id(inputs[i]) or _reads_values(inputs, ids, i, layer.input_dim, keras):
                        limits[i] = min(limits.get(i, layer.input_dim), layer.input_dim)
    return limits


def _inputs_reached(tensor, index: dict) -> set[int]:
    """Indices of the model inputs that ``tensor`` is computed from through integer tensors only."""
    reached, stack, seen = set(), [tensor], set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in index:
            reached.add(index[id(tensor)])
            continue
        # Float tensors carry no ids (casts, slices, lookups do).
        if not str(getattr(tensor, "dtype", "")).startswith(("int", "uint")):
            continue
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        operation, node_index = history[0], history[1]
        nodes = getattr(operation, "_inbound_nodes", [])
        if node_index < len(nodes):
            stack.extend(getattr(nodes[node_index], "input_tensors", []))
    return reached


def _reads_values(inputs, ids, i: int, input_dim: int, keras) -> bool:
    """Whether ``ids`` (a tensor of the model's graph) changes with input ``i``'s values, its shape fixed.

    When in doubt (an input that cannot be drawn, a subgraph that fails to
    run), it does: the limit is kept.
    """
    rng = np.random.default_rng(0)

    def draw(tensor):
        shape = [2] + [8 if d is None else d for d in tuple(tensor.shape)[1:]]
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype.startswith(("int", "uint")):
            return rng.integers(0, max(input_dim, 2), shape).astype(dtype)
        if dtype.startswith(("float", "bfloat")):
            return rng.normal(size=shape).astype(dtype)
        return None

    feeds = [draw(tensor) for tensor in inputs]
    if any(feed is None for feed in feeds):
        return True
    try:
        subgraph = keras.Model(inputs, ids)
        first = keras.ops.convert_to_numpy(subgraph(feeds, training=False))
        for _ in range(2):
            feeds[i] = draw(inputs[i])
            if not np.array_equal(first, keras.ops.convert_to_numpy(subgraph(feeds, training=False))):
                return True
    except Exception:
        return True
    return False


def _lookup_keys(model, specs) -> dict[str, tuple]:
    """Input name -> vocabulary of the lookup layers that take its type (strings or integers)."""
    keys: dict[str, tuple] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = type(layer).__name__
        if kind not in ("StringLookup", "IntegerLookup") or getattr(layer, "lookup_table", None) is None:
            continue
        vocabulary = tuple(v for v in layer.get_vocabulary() if v != layer.oov_token)
        for spec in specs:
            reads = spec.dtype == "string" if kind == "StringLookup" else spec.dtype.startswith(("int", "uint"))
            if reads:
                keys[spec.name] = tuple(dict.fromkeys(keys.get(spec.name, ()) + vocabulary))
    return keys


# -- outputs ----------------------------------------------------------------


def _name_outputs(result, model, keras, inputs) -> dict:
    """The model's outputs by name, in the model's order: dict keys, else ``model.output_names``.

    A name an input already has gets ``_output`` appended (ONNX names are one namespace).
    """
    model_names = list(getattr(model, "output_names", None) or [])
    if isinstance(result, dict):
        keys = list(result)
        if sorted(keys) == sorted(model_names):
            keys = model_names
        names = _unique([clean_name(str(k)) for k in keys])
        values = [result[k] for k in keys]
    else:
        values = keras.tree.flatten(result)
        if len(model_names) != len(values):
            model_names = [f"output_{i}" for i in range(len(values))]
        names = _unique([clean_name(n) for n in model_names])
    names = [f"{name}_output" if name in inputs else name for name in names]
    return dict(zip(names, values))


def _output_specs(model, signature: ModelSignature, keras) -> list[TensorSpec]:
    symbolic = {
        t.name: keras.KerasTensor(tuple(None if isinstance(d, str) else d for d in t.shape), dtype=t.dtype)
        for t in signature.inputs
    }
    packed = keras.tree.map_structure(lambda name: symbolic[name], signature.input_structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"training": False} if getattr(model, "_call_has_training_arg", True) else {}
        result = model.compute_output_spec(packed, **kwargs)
    named = _name_outputs(result, model, keras, signature.input_names)
    following = _sequence_axes(model, signature)
    specs = []
    for name, value in named.items():
        dims = []
        for a, d in enumerate(value.shape):
            if a == 0:
                dims.append(BATCH_AXIS if d is None else int(d))
            elif a in following.get(name, ()):
                dims.append(SEQUENCE_AXIS)
            else:
                dims.append(f"{name}_dim{a}" if d is None else int(d))
        specs.append(TensorSpec(name, keras.backend.standardize_dtype(value.dtype), tuple(dims)))
    return specs


def _sequence_axes(model, signature: ModelSignature) -> dict[str, list[int]]:
    """Output name -> its axes that follow the input's one variable ``sequence`` axis.

    Found by calling the model at two lengths: an axis that takes each
    length in turn is that axis.
    """
    axes = signature.variable_axes()
    if len(axes) != 1 or any(t.dtype == "string" for t in signature.inputs):
        return {}
    (input_name, axis), = axes
    shapes = []
    for length in (3, 5):
        feeds = {}
        for t in signature.inputs:
            dims = [1] + [length if (t.name, a) == (input_name, axis) else d for a, d in enumerate(t.shape) if a > 0]
            feeds[t.name] = np.ones(dims, dtype=t.dtype)
        shapes.append({name: np.shape(value) for name, value in signature.call(model, feeds).items()})
    return {
        name: [a for a, (d3, d5) in enumerate(zip(shape, shapes[1][name])) if a > 0 and (d3, d5) == (3, 5)]
        for name, shape in shapes[0].items()
    }


# -- names ------------------------------------------------------------------


def clean_name(name: str) -> str:
    """A valid ONNX name from a Keras tensor or layer name (``tokens:0`` -> ``tokens``)."""
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

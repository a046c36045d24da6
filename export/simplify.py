"""Rewrites of tf2onnx's graph that save onnxruntime work and change no output.

tf2onnx lowers TensorFlow's ``SelectV2(c, x, y)`` on numbers to
``Cast(c) * x + y * Cast(Not(c))``, and a Keras ``Conv1D`` to a Conv of
height 1 followed by Squeeze and a bias Add. Three patterns are wasted work:

- a select with ``y`` a constant zero (masking, as in ``where(mask, x, 0)``):
  the second product is always 0 (a 0 or 1 times 0), so ``Cast(c) * x``
  alone is the same value (up to the sign of a zero), infinities and NaNs
  included; the same for ``x`` zero.
- the indices of a ``Gather``, ``select(i < 0, i + n, i)`` with ``n`` the
  gathered axis's size (how Keras's ``take`` wraps negative indices on
  TensorFlow): ONNX ``Gather`` wraps negative indices itself.
- the Conv1D's bias Add after the Squeeze: it becomes the Conv's bias input,
  and an activation after it moves before the Squeeze, where onnxruntime
  fuses it into the Conv.

Measured on the sentiment recipe (2 cores, 1 onnxruntime thread): 63 nodes
become 44, outputs are bit for bit the same, and a call costs 20 us instead
of 26 us for 1 row of 1 token, 458 us instead of 580 us for 64 rows of 12
tokens. Turning the remaining selects into ``Where`` as well was faster on
tiny inputs but slower on large ones (onnxruntime's broadcasting ``Where``),
so they stay as tf2onnx wrote them.

`stable_names` then orders and names the graph by its structure alone, so
that one model converted twice gives the same bytes.
"""

from __future__ import annotations

import copy
import re

import numpy as np

__all__ = ["simplify", "stable_names"]


def simplify(proto) -> dict[str, int]:
    """Rewrite ``proto`` (an ``onnx.ModelProto``) in place.

    Returns:
        ``{"nodes_before": n, "nodes_after": m}``.
    """
    from onnx import helper  # onnx loads lazily, as in export.to_onnx: --help stays fast

    graph = proto.graph
    before = len(graph.node)
    constants = _constants(graph)
    producers = {name: node for node in graph.node for name in node.output}
    for index, node in enumerate(graph.node):
        select = _select(node, producers)
        if select is None:
            continue
        condition_cast, x, negation_cast, y = select
        if _is_zero(y, constants, producers):
            kept = [condition_cast, x]
        elif _is_zero(x, constants, producers):
            kept = [y, negation_cast]
        else:
            continue
        graph.node[index].CopyFrom(helper.make_node("Mul", kept, list(node.output), name=node.name))
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2:
            index = _wrapped_index(node, producers, constants)
            if index is not None:
                node.input[1] = index
    _fold_conv1d_bias(graph, constants)
    _drop_unused(graph)
    return {"nodes_before": before, "nodes_after": len(graph.node)}


#: Element-wise activations that onnxruntime fuses into a preceding Conv.
_CONV_ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"}


def _fold_conv1d_bias(graph, constants) -> None:
    """``Conv -> Squeeze(axis 2) -> Add(bias) [-> activation]`` becomes ``Conv(bias) [-> activation] -> Squeeze``.

    That is how tf2onnx writes a Keras ``Conv1D`` (a Conv2D of height 1, then
    BiasAdd). The bias added to the squeezed ``(batch, channels, length)``
    tensor broadcasts over a short last axis, which onnxruntime does slowly
    (68 of 600 us for 64 rows of 12 tokens); inside the Conv it is part of the
    convolution's own output pass, and an activation that now follows the
    Conv directly is fused into it as well.
    """
    from onnx import NodeProto, numpy_helper

    producers = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {output.name: [None] for output in graph.output}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    folded = {}  # Add output -> (Squeeze output, activation output or None)
    for add in graph.node:
        if not _is(add, "Add") or len(add.input) != 2:
            continue
        for squeezed, bias_name in (add.input, reversed(add.input)):
            squeeze, bias = producers.get(squeezed), constants.get(bias_name)
            conv = producers.get(squeeze.input[0]) if _is(squeeze, "Squeeze") and len(squeeze.input) == 2 else None
            weights = constants.get(conv.input[1]) if _is(conv, "Conv") and len(conv.input) == 2 else None
            if (
                weights is None
                or bias is None
                or weights.ndim != 4
                or weights.shape[2] != 1
                or constants.get(squeeze.input[1], np.zeros(0)).ravel().tolist() not in ([2], [-2])
                or bias.ndim not in (2, 3)
                or bias.size != weights.shape[0]
                or bias.shape[-2:] != (weights.shape[0], 1)
                or len(readers.get(conv.output[0], ())) != 1
                or len(readers.get(squeeze.output[0], ())) != 1
            ):
                continue
            name = f"{conv.output[0]}/bias"
            graph.initializer.append(numpy_helper.from_array(bias.reshape(-1).astype(weights.dtype), name))
            conv.input.append(name)
            after = readers.get(add.output[0], [])
            activation = after[0] if len(after) == 1 and _is_any(after[0], _CONV_ACTIVATIONS) else None
            folded[add.output[0]] = (squeeze.output[0], activation.output[0] if activation else None)
            break
    if not folded:
        return
    squeezes = {squeeze: (added, activation) for added, (squeeze, activation) in folded.items()}
    moved = {activation for _, activation in folded.values() if activation}
    nodes, held = [], {}
    for original in graph.node:
        node = NodeProto()
        node.CopyFrom(original)
        output = node.output[0]
        if _is(node, "Add") and output in folded:
            continue
        if output in squeezes:
            added, activation = squeezes[output]
            if activation is None:  # the Squeeze now yields the sum's name
                node.output[0] = added
            else:  # it moves after the activation and yields its name
                node.output[0] = activation
                held[activation] = node
                continue
        if output in moved:
            squeeze = held.pop(output)
            node.input[0] = squeeze.input[0]
            node.output[0] = squeeze.input[0] = f"{output}/unsqueezed"
            nodes += [node, squeeze]
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _select(node, producers):
    """``(Cast(c), x, Cast(Not(c)), y)`` if ``node`` is tf2onnx's ``Cast(c) * x + y * Cast(Not(c))``."""
    if not _is(node, "Add") or len(node.input) != 2:
        return None
    for first, second in (node.input, reversed(node.input)):
        kept, dropped = producers.get(first), producers.get(second)
        if not (_is(kept, "Mul") and _is(dropped, "Mul")):
            continue
        for cast_in, x in (kept.input, reversed(kept.input)):
            condition = _cast_source(producers.get(cast_in))
            if condition is None:
                continue
            for negated_in, y in (dropped.input, reversed(dropped.input)):
                negation = producers.get(_cast_source(producers.get(negated_in)) or "")
                if _is(negation, "Not") and negation.input[0] == condition:
                    return cast_in, x, negated_in, y
    return None


def _wrapped_index(gather, producers, constants):
    """``i`` if the indices of ``gather`` are ``select(i < 0, i + size, i)``."""
    select = _select(producers.get(gather.input[1]), producers)
    if select is None:
        return None
    condition_cast, shifted, _, index = select
    less = producers.get(_cast_source(producers.get(condition_cast)) or "")
    add = producers.get(shifted)
    if not (_is(less, "Less") and _is(add, "Add") and index in add.input):
        return None
    compared = less.input[0]
    if _is(producers.get(compared), "Cast"):  # tf2onnx may compare a cast copy
        compared = producers[compared].input[0]
    zero, size = constants.get(less.input[1]), constants.get(next(n for n in add.input if n != index), None)
    data = constants.get(gather.input[0])
    axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
    if (
        compared != index
        or zero is None
        or np.any(zero)
        or size is None
        or size.size != 1
        or data is None
        or int(size.reshape(-1)[0]) != data.shape[axis]
    ):
        return None
    return index


def _is_zero(name, constants, producers) -> bool:
    """Whether ``name`` is a constant of zeros (an initializer, or ``ConstantOfShape`` of 0)."""
    if name in constants:
        return not np.any(constants[name])
    node = producers.get(name)
    if not _is(node, "ConstantOfShape"):
        return False
    from onnx import numpy_helper

    value = [numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
    return not value or not np.any(value[0])  # no value attribute: a float 0


def _cast_source(node):
    return node.input[0] if _is(node, "Cast") else None


def _is(node, op_type: str) -> bool:
    return _is_any(node, {op_type})


def _is_any(node, op_types) -> bool:
    return node is not None and node.op_type in op_types and node.domain in ("", "ai.onnx")


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _drop_unused(graph) -> None:
    """Remove nodes and initializers that no graph output depends on."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            for attribute in node.attribute:  # subgraphs (If, Loop) read outer names
                for subgraph in [attribute.g, *attribute.graphs]:
                    needed.update(name for inner in subgraph.node for name in inner.input)
    if len(kept) != len(graph.node):
        kept.reverse()
        del graph.node[:]
        graph.node.extend(kept)
    inputs = {value.name for value in graph.input}
    unused = [t for t in graph.initializer if t.name not in needed and t.name not in inputs]
    for tensor in unused:
        graph.initializer.remove(tensor)


def stable_names(proto) -> None:
    """Name nodes and inner tensors by the graph's structure, so one model always gives the same bytes.

    tf2onnx numbers the names it makes (``Const__123``, ``while_cond_frozen_3303``)
    with counters that run across conversions in a process, and orders
    nodes and shared constants by them. Here nodes are put in the order a
    depth-first walk from the outputs reaches them, then named
    ``<Keras layer scope>/<op>_<position>``; a tensor is named after the
    node that makes it (a constant after its first user). The graph's inputs
    and outputs keep their names.
    """
    # tf2onnx names the graph after the traced function, numbered per process.
    proto.graph.name = re.sub(r"_\d+$", "", proto.graph.name)
    proto.graph.doc_string = ""
    _drop_identities(proto.graph, keep=proto.graph.output)
    _structural_order(proto.graph)
    fixed = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    mapping = {name: name for name in fixed}
    position = iter(range(1 << 62))
    axes: dict[str, str] = {}

    def name_axes(values) -> None:
        for value in values:
            for dim in value.type.tensor_type.shape.dim:
                if re.fullmatch(r"unk__\d+", dim.dim_param):
                    dim.dim_param = axes.setdefault(dim.dim_param, f"unk_{len(axes)}")

    def visit(graph, prefix: str) -> None:
        initializers = {t.name for t in graph.initializer}
        for k, value in enumerate(graph.input):
            if value.name not in fixed:
                mapping[value.name] = f"{prefix}input_{k}"
        for node in graph.node:
            node.name = f"{node.op_type}_{next(position)}"
            for k, name in enumerate(node.input):
                if name and name not in mapping and name in initializers:
                    mapping[name] = f"{node.name}/const_{k}"
            node.input[:] = [mapping.get(name, name) for name in node.input]
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    sub.name = f"{node.name}_{attr.name}"
                    visit(sub, f"{node.name}/{attr.name}_")
            for k, name in enumerate(node.output):
                if name and name not in fixed:
                    mapping[name] = f"{node.name}:{k}"
            node.output[:] = [mapping.get(name, name) for name in node.output]
        used = [t for t in graph.initializer if t.name in mapping]
        for tensor in used:
            tensor.name = mapping[tensor.name]
        used = sorted((copy.deepcopy(t) for t in used), key=lambda t: t.name)
        del graph.initializer[:]
        graph.initializer.extend(used)
        for value in graph.input:
            value.name = mapping.get(value.name, value.name)
        for value in graph.output:
            value.name = mapping.get(value.name, value.name)
        known = sorted((copy.deepcopy(v) for v in graph.value_info if v.name in mapping), key=lambda v: mapping[v.name])
        for value in known:
            value.name = mapping[value.name]
        del graph.value_info[:]
        graph.value_info.extend(known)
        name_axes(list(graph.input) + list(graph.output) + list(graph.value_info))

    visit(proto.graph, "")


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _drop_identities(graph, keep) -> None:
    """Remove Identity nodes of values made in the same graph; tf2onnx keeps some, depending on its counters.

    An Identity that gives one of ``keep``'s names (the model's outputs)
    stays. A value that a loop body outputs twice gets one Identity, on its
    later output.
    """
    from onnx import helper

    kept = {v.name for v in keep}
    made = {out for node in graph.node for out in node.output}
    rename = {}
    for node in list(graph.node):
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _drop_identities(sub, keep=())
        if node.op_type == "Identity" and node.input[0] in made and node.output[0] not in kept:
            rename[node.output[0]] = node.input[0]
            graph.node.remove(node)
    if not rename:
        return

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for g in _graphs(graph):
        for node in g.node:
            node.input[:] = [resolve(name) for name in node.input]
    seen = set()
    for k, value in enumerate(graph.output):
        value.name = resolve(value.name)
        if value.name in seen:
            copy = f"{value.name}/output_{k}"
            graph.node.append(helper.make_node("Identity", [value.name], [copy], name=copy))
            value.name = copy
        seen.add(value.name)


def _structural_order(graph) -> None:
    """Reorder ``graph.node`` (and its subgraphs') depth-first from the outputs, inputs before users.

    Nodes no output depends on are dropped (tf2onnx leaves some in loop bodies).
    """
    producer = {out: node for node in graph.node for out in node.output if out}

    def needs(node) -> list[str]:
        names = list(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _structural_order(sub)
                for inner in _graphs(sub):
                    names += [name for n in inner.node for name in n.input]
        return [name for name in names if name in producer]

    order, done = [], set()
    for root in [producer[o.name] for o in graph.output if o.name in producer]:  # dead nodes are dropped
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for name in reversed(needs(node)):
                if id(producer[name]) not in done:
                    stack.append((producer[name], False))
    copies = [copy.deepcopy(node) for node in order]
    del graph.node[:]
    graph.node.extend(copies)

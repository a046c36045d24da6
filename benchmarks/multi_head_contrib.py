"""Would a fused attention op pay on CPU? One attention core, three ways, on onnxruntime.

    python -m benchmarks.multi_head --contrib    # runs this after the model comparison

The core of one attention block after the projections: query, key and value
of shape (batch, 40, 64), 4 heads of 16, and a key padding mask (int32
(batch, 40), 1 for a real token), as

- ``plain``: the subgraph `export.convert` writes for
  `MultiHeadScaledDotAttention` (Reshape/Transpose into heads, Mul by the
  scale, MatMul, the clip of the scores to +-1e30 (Min, Max), Add of the
  mask's bias, Softmax, Mul by the "row has a key" factor, MatMul, back to
  (batch, 40, 64)); and the same without the clip, to show its cost;
- ``com.microsoft.MultiHeadAttention``: onnxruntime's contrib op
  (``num_heads=4``, ``key_padding_mask``), then the same zeroing factor on its
  output (it gives a fully masked row the average of the values);
- ``Attention (opset 23)``: the standard op with a boolean mask expanded to
  (batch, 1, 40, 40) (onnxruntime 1.32 does not broadcast it over the
  queries), then the zeroing factor.

Each runs on a default ``InferenceSession``, timed in turns at every batch
size (`benchmarks.timing`). Then the whole model: our exported file against
copies with its first attention layer's core rewritten into each fused op
(`fuse_first_layer`; the last layer's weights are model outputs, which
neither op returns) and, as the control of the opset-23 one, the same file
only converted to opset 23. Parity: each against a float64 numpy reference on
rows of varied lengths, and what each gives a fully masked row without the
zeroing factor. Needs numpy, onnx and onnxruntime only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CORES", "build_core", "fuse_first_layer", "markdown", "markdown_model", "reference", "run", "run_model"]

SEQ = 40
HIDDEN = 64
HEADS = 4
#: ``score_dtype``'s masked score in `keras_attn.attention` (the bias our exporter writes).
MASKED_SCORE = -1e37

#: ``_SCORE_LIMIT`` of `keras_attn.attention`: scores are clipped to +-1e30 (a Min and a Max).
SCORE_LIMIT = 1e30

PLAIN = "plain subgraph (ours)"
UNCLIPPED = "plain, no score clip"
CONTRIB = "com.microsoft.MultiHeadAttention"
OPSET23 = "Attention (opset 23)"
CORES = (PLAIN, UNCLIPPED, CONTRIB, OPSET23)


def build_core(kind: str, zero_empty_rows: bool = True):
    """The ONNX model of one attention core as ``kind`` (one of `CORES`)."""
    from onnx import TensorProto, helper, numpy_helper

    head = HIDDEN // HEADS
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, output, domain="", **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    mask = "key_padding_mask"
    out = "attention_core"
    raw = out if not zero_empty_rows else "core"
    if kind in (PLAIN, UNCLIPPED):
        shape = const("heads_shape", np.array([0, 0, HEADS, head], np.int64))
        q = node("Reshape", ["query", shape], "q4")
        q = node("Transpose", [q], "qt", perm=[0, 2, 1, 3])
        q = node("Mul", [q, const("scale", np.float32(1 / np.sqrt(head)))], "qs")
        k = node("Transpose", [node("Reshape", ["key", shape], "k4")], "kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", ["value", shape], "v4")], "vt", perm=[0, 2, 1, 3])
        scores = node("MatMul", [q, k], "scores")
        if kind == PLAIN:
            scores = node("Min", [scores, const("limit", np.float32(SCORE_LIMIT))], "clip_high")
            scores = node("Max", [scores, const("minus_limit", np.float32(-SCORE_LIMIT))], "clipped")
        allowed = node("Cast", [mask], "allowed", to=TensorProto.BOOL)
        masked = node("Cast", [node("Not", [allowed], "masked_b")], "masked_f", to=TensorProto.FLOAT)
        bias = node("Mul", [masked, const("masked_score", np.float32(MASKED_SCORE))], "bias2")
        bias = node("Unsqueeze", [bias, const("axes_12", np.array([1, 2], np.int64))], "bias")
        weights = node("Softmax", [node("Add", [scores, bias], "biased")], "weights", axis=-1)
        if zero_empty_rows:
            keep = node("Cast", [node("ReduceMax", [mask], "any", keepdims=1, axes=[1])], "keep2", to=TensorProto.FLOAT)
            keep = node("Unsqueeze", [keep, const("axes_23", np.array([2, 3], np.int64))], "keep")
            weights = node("Mul", [weights, keep], "kept")
        context = node("Transpose", [node("MatMul", [weights, v], "context4")], "context_t", perm=[0, 2, 1, 3])
        node("Reshape", [context, const("hidden_shape", np.array([0, 0, HIDDEN], np.int64))], out)
        opsets = [helper.make_opsetid("", 17)]
    else:
        if kind == CONTRIB:
            node("MultiHeadAttention", ["query", "key", "value", "", mask], raw, domain="com.microsoft", num_heads=HEADS)
            opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        elif kind == OPSET23:
            allowed = node("Cast", [mask], "allowed2", to=TensorProto.BOOL)
            allowed = node("Unsqueeze", [allowed, const("axes_12", np.array([1, 2], np.int64))], "allowed1")
            # onnxruntime 1.32 wants the mask's query axis at full length (no broadcasting there).
            allowed = node("Expand", [allowed, const("mask_shape", np.array([1, 1, SEQ, 1], np.int64))], "allowed")
            node("Attention", ["query", "key", "value", allowed], raw, q_num_heads=HEADS, kv_num_heads=HEADS)
            opsets = [helper.make_opsetid("", 23)]
        else:
            raise ValueError(f"unknown core {kind!r} (known: {', '.join(CORES)})")
        if zero_empty_rows:
            if kind == OPSET23:  # ReduceMax takes its axes as an input from opset 18
                any_key = node("ReduceMax", [mask, const("axis_1", np.array([1], np.int64))], "any", keepdims=1)
            else:
                any_key = node("ReduceMax", [mask], "any", keepdims=1, axes=[1])
            keep = node("Cast", [any_key], "keep2", to=TensorProto.FLOAT)
            keep = node("Unsqueeze", [keep, const("axes_2", np.array([2], np.int64))], "keep")
            node("Mul", [raw, keep], out)
    floats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", SEQ, HIDDEN]) for n in ("query", "key", "value")]
    graph = helper.make_graph(nodes, kind.replace(" ", "_"),
                              floats + [helper.make_tensor_value_info(mask, TensorProto.INT32, ["batch", SEQ])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", SEQ, HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=opsets, ir_version=10 if kind == OPSET23 else 8)


def feeds(batch: int, seed: int = 0, empty_row: bool = False) -> dict:
    """Random query/key/value and a key padding mask of 3 to 30 real tokens a row (row 0 all padding if asked)."""
    rng = np.random.default_rng(seed)
    out = {n: rng.normal(size=(batch, SEQ, HIDDEN)).astype(np.float32) for n in ("query", "key", "value")}
    lengths = rng.integers(3, 31, batch)
    if empty_row:
        lengths[0] = 0
    out["key_padding_mask"] = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
    return out


def reference(f: dict) -> np.ndarray:
    """float64 attention under our rule: softmax over the real keys, a zero output where there is none."""
    head = HIDDEN // HEADS

    def split(x):
        return x.astype(np.float64).reshape(len(x), SEQ, HEADS, head).transpose(0, 2, 1, 3)

    q, k, v = split(f["query"]), split(f["key"]), split(f["value"])
    allowed = f["key_padding_mask"].astype(bool)[:, None, None, :]
    scores = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / np.sqrt(head), -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(top), top, 0))
    total = e.sum(-1, keepdims=True)
    weights = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return (weights @ v).transpose(0, 2, 1, 3).reshape(len(q), SEQ, HIDDEN)


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(mode: dict, progress=None) -> dict:
    """Parity and timing of every core that loads; ``{"cores": {name: ...}, "timing": {batch: {name: summary}}}``."""
    from benchmarks import timing

    results: dict = {"seq": SEQ, "hidden": HIDDEN, "heads": HEADS, "cores": {}}
    check = feeds(16, seed=1, empty_row=True)
    expected = reference(check)
    runs = {}
    for kind in CORES:
        entry: dict = {}
        try:
            session = _session(build_core(kind))
            bare = _session(build_core(kind, zero_empty_rows=False))
            got = session.run(None, check)[0]
            empty = bare.run(None, check)[0][0]
        except Exception as error:  # noqa: BLE001 - an op this onnxruntime build lacks is a finding, not a crash
            entry["error"] = " ".join(str(error).split())[:300]
            results["cores"][kind] = entry
            continue
        entry["max_abs_diff"] = float(np.max(np.abs(got[1:] - expected[1:])))
        entry["empty_row_max_abs"] = float(np.max(np.abs(got[0])))
        mean_value = check["value"][0].mean(axis=0)
        unmasked = reference({**check, "key_padding_mask": np.ones_like(check["key_padding_mask"])})[0]
        entry["empty_row_without_zeroing"] = (
            "NaN" if np.isnan(empty).any() else "zeros" if not np.abs(empty).max()
            else "mean of the values" if np.allclose(empty, mean_value, atol=1e-5)
            else "attends to every key (mask ignored)" if np.allclose(empty, unmasked, atol=1e-3) else "other")
        results["cores"][kind] = entry
        runs[kind] = lambda f, texts, session=session: session.run(None, f)
    inputs = {b: feeds(b, seed=2) for b in mode["batches"]}
    results["timing"] = {}
    for batch in mode["batches"]:
        samples = timing.time_batch(runs, inputs[batch], None, budget_s=mode["contrib_budget_s"], rounds=mode["rounds"],
                                    min_calls=mode["min_calls"], progress=progress, label=f"attention core, batch {batch}")
        results["timing"][str(batch)] = {
            name: {**timing.summarize(r, batch), "speedup_vs_plain": timing.paired_speedup(samples[PLAIN], r)}
            for name, r in samples.items()}
    return results


def markdown(results: dict) -> str:
    out = [f"## Attention core alone: fused ops against the plain subgraph (batch, {results['seq']}, "
           f"{results['hidden']}), {results['heads']} heads, key padding mask; default sessions", ""]
    out += ["| core | max diff vs float64 (zeroing on) | fully masked row, op alone | with zeroing |", "|---|--:|---|--:|"]
    for name, c in results["cores"].items():
        if "error" in c:
            out.append(f"| {name} | does not run: {c['error'][:120]} | - | - |")
        else:
            out.append(f"| {name} | {c['max_abs_diff']:.1e} | {c['empty_row_without_zeroing']} | {c['empty_row_max_abs']:.1e} |")
    names = list(next(iter(results["timing"].values()))) if results["timing"] else []
    if not names:
        return "\n".join(out + ["", "No core ran: nothing timed."])
    out += ["", "| batch | " + " | ".join(f"{n} rows/s" for n in names) + " | " +
            " | ".join(f"{n} / plain" for n in names if n != PLAIN) + " |",
            "|---|" + "--:|" * (2 * len(names) - 1)]
    for batch, by in results["timing"].items():
        out.append(f"| {batch} | " + " | ".join(f"{by[n]['sentences_per_s']:.4g}" for n in names) + " | "
                   + " | ".join(f"{by[n]['speedup_vs_plain']:.2f}x" for n in names if n != PLAIN) + " |")
    return "\n".join(out)


#: The whole-model variants of `run_model`, in the order they are timed.
MODEL_PLAIN = "our file"
MODEL_CONTRIB = "layer 1 as com.microsoft.MultiHeadAttention"
MODEL_OPSET23 = "our file at opset 23 (control)"
MODEL_OPSET23_FUSED = "opset 23, layer 1 as Attention"


def fuse_first_layer(model, kind: str):
    """``model`` (our exported file, as a ModelProto) with its first attention core as one fused op.

    ``kind`` is `CONTRIB` or `OPSET23` (then ``model`` must already be at
    opset 23). The core is found from the first Softmax: the score MatMul
    above it, the projections' Reshape and bias Add into it, the context
    MatMul and its Transpose and Reshape back to (batch, seq, hidden) below;
    the fused op takes the projections' MatMul outputs (and their biases),
    the padding mask from ``Not(Equal(tokens, 0))``, and its output is zeroed
    for a row without a real token, as our layer does. Changes ``model``.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    scores = producer[softmax.input[0]]
    while scores.op_type in ("Add", "Max", "Min"):
        scores = producer[scores.input[0]]

    def projection(transpose):  # Transpose <- [Mul by the scale] <- Add of the bias <- Reshape <- MatMul
        node = producer[transpose.input[0]]
        if node.op_type == "Mul":
            node = producer[node.input[0]]
        if node.op_type != "Add":
            raise ValueError(f"not our attention core: {node.op_type} before the heads' Transpose")
        bias = next(init[i] for i in node.input if i in init).reshape(-1).astype(np.float32)
        reshape = producer[next(i for i in node.input if i not in init)]
        return reshape.input[0], bias

    q, bq = projection(producer[scores.input[0]])
    k, bk = projection(producer[scores.input[1]])
    keep = next(c for c in consumers[softmax.output[0]] if c.op_type == "Mul")
    context = next(c for c in consumers[keep.output[0]] if c.op_type == "MatMul")
    v, bv = projection(producer[context.input[1]])
    back = consumers[consumers[context.output[0]][0].output[0]][0]
    if back.op_type != "Reshape":
        raise ValueError(f"not our attention core: {back.op_type} after the context")
    equal = next(n for n in graph.node if n.op_type == "Equal" and any(i.name in n.input for i in graph.input))
    real = next(c for c in consumers[equal.output[0]] if c.op_type == "Not").output[0]

    def const(name, value):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    new = [helper.make_node("Cast", [real], ["fused/real"], to=TensorProto.FLOAT)]
    if kind == CONTRIB:
        new.append(helper.make_node("ReduceMax", ["fused/real"], ["fused/any"], axes=[1], keepdims=1))
        new.append(helper.make_node("Cast", [real], ["fused/mask"], to=TensorProto.INT32))
        new.append(helper.make_node("MultiHeadAttention", [q, k, v, const("fused/bias", np.concatenate([bq, bk, bv])),
                                                           "fused/mask"], ["fused/out"], domain="com.microsoft",
                                    num_heads=HEADS))
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    elif kind == OPSET23:
        new.append(helper.make_node("ReduceMax", ["fused/real", const("fused/axis_1", np.array([1], np.int64))],
                                    ["fused/any"], keepdims=1))
        for name, source, bias in (("q", q, bq), ("k", k, bk), ("v", v, bv)):
            new.append(helper.make_node("Add", [source, const(f"fused/b{name}", bias)], [f"fused/{name}"]))
        new.append(helper.make_node("Unsqueeze", [real, const("fused/axes_12", np.array([1, 2], np.int64))],
                                    ["fused/mask1"]))
        new.append(helper.make_node("Expand", ["fused/mask1", const("fused/mask_shape", np.array([1, 1, SEQ, 1], np.int64))],
                                    ["fused/mask"]))
        new.append(helper.make_node("Attention", ["fused/q", "fused/k", "fused/v", "fused/mask"], ["fused/out"],
                                    q_num_heads=HEADS, kv_num_heads=HEADS))
    else:
        raise ValueError(f"kind must be {CONTRIB!r} or {OPSET23!r}, got {kind!r}")
    new.append(helper.make_node("Unsqueeze", ["fused/any", const("fused/axis_2", np.array([2], np.int64))], ["fused/keep"]))
    new.append(helper.make_node("Mul", ["fused/out", "fused/keep"], [back.output[0]]))
    nodes = list(graph.node)
    at = nodes.index(back)
    nodes = nodes[:at] + new + nodes[at + 1:]
    outputs = {o.name for o in graph.output}
    while True:  # drop what only the old core used
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _opset23(path):
    import onnx
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(str(path)), 23)
    model.ir_version = 10
    return model


def run_model(path, ids_by_batch: dict, check_ids: np.ndarray, mode: dict, progress=None) -> dict:
    """Our file at ``path`` against its fused copies (`fuse_first_layer`) on default sessions.

    ``check_ids`` (which should hold a row of padding only) gives each
    variant's max |diff| from our file per output; ``ids_by_batch`` the timed
    batches. Returns ``{"variants": {name: {"nodes", "max_abs_diff"} or {"error"}},
    "timing": {batch: {name: summary with speedup_vs_plain}}}``.
    """
    import onnx

    from benchmarks import timing

    builders = {
        MODEL_PLAIN: lambda: onnx.load(str(path)),
        MODEL_CONTRIB: lambda: fuse_first_layer(onnx.load(str(path)), CONTRIB),
        MODEL_OPSET23: lambda: _opset23(path),
        MODEL_OPSET23_FUSED: lambda: fuse_first_layer(_opset23(path), OPSET23),
    }
    results: dict = {"variants": {}, "timing": {}}
    runs = {}
    reference_out = None
    for name, build in builders.items():
        try:
            model = build()
            session = _session(model)
            feed = session.get_inputs()[0].name
            got = session.run(None, {feed: check_ids})
        except Exception as error:  # noqa: BLE001 - a variant that does not build or load is a finding
            results["variants"][name] = {"error": " ".join(str(error).split())[:300]}
            continue
        reference_out = got if reference_out is None else reference_out
        results["variants"][name] = {
            "nodes": len(model.graph.node),
            "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(got, reference_out))}
        runs[name] = lambda x, texts, session=session, feed=feed: session.run(None, {feed: x})
    for batch, x in ids_by_batch.items():
        samples = timing.time_batch(runs, x, None, budget_s=mode["batch1_budget_s"] if batch == 1 else mode["budget_s"],
                                    rounds=mode["rounds"], min_calls=mode["min_calls"], progress=progress,
                                    label=f"model with fused attention, batch {batch}")
        results["timing"][str(batch)] = {
            name: {**timing.summarize(r, batch), "speedup_vs_plain": timing.paired_speedup(samples[MODEL_PLAIN], r)}
            for name, r in samples.items()}
    return results


def markdown_model(results: dict) -> str:
    out = ["## The whole model with its first attention layer fused (our file rewritten; default sessions)", "",
           "| variant | nodes | max diff vs our file |", "|---|--:|--:|"]
    for name, v in results["variants"].items():
        out.append(f"| {name} | does not run: {v['error'][:120]} | - |" if "error" in v
                   else f"| {name} | {v['nodes']} | {v['max_abs_diff']:.1e} |")
    names = list(next(iter(results["timing"].values()))) if results["timing"] else []
    if not names:
        return "\n".join(out)
    out += ["", "| batch | " + " | ".join(f"{n} sent/s (x our file)" for n in names) + " |", "|---|" + "--:|" * len(names)]
    for batch, by in results["timing"].items():
        out.append(f"| {batch} | " + " | ".join(f"{by[n]['sentences_per_s']:.4g} ({by[n]['speedup_vs_plain']:.2f}x)"
                                              for n in names) + " |")
    return "\n".join(out)

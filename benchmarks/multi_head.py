"""Our multi-head attention on onnxruntime against Keras's own, exported by Keras (issue 21).

    python -m benchmarks.multi_head              # a few minutes on 2 cores
    python -m benchmarks.multi_head --quick      # about a minute
    python -m benchmarks.multi_head --smoke --json out.json   # seconds: checks the harness
    python -m benchmarks.multi_head --contrib    # also time com.microsoft.MultiHeadAttention

One transformer text classifier (token + learned position embeddings, pre-norm
blocks of `keras_attn.MultiHeadScaledDotAttention` and a feed-forward, masked
mean pooling) and the same model with every attention layer replaced by
``keras.layers.MultiHeadAttention`` (same config and weights: the same
function, checked in Keras before anything is timed). Ours is exported with
`export.convert.convert`, Keras's with ``model.export(format="onnx")``; both
files run on a default ``onnxruntime.InferenceSession`` (no SessionOptions)
on the same int32 ids (sentences of varying lengths padded with 0), every
output fetched, timed in turns (`benchmarks.timing`). The report counts the
Einsum and mask nodes of each graph as onnxruntime optimises it.

``--contrib`` adds the experiment behind the export decision
(`benchmarks.multi_head_contrib`): one attention core (batch, 40, 64), 4
heads, with a key padding mask, as onnxruntime's contrib
``com.microsoft.MultiHeadAttention``, as opset 23 ``Attention`` and as the
plain subgraph our exporter writes (MatMul, Mul, Add, Softmax, MatMul); then
our whole file with its first attention layer rewritten into each fused op.

Markdown report on stdout, progress on stderr; ``--json PATH`` writes every number.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["MODES", "build_model", "count_nodes", "main", "run", "with_keras_attention"]

VOCAB_SIZE = 3001
NUM_CLASSES = 2
SEQ_LEN = 40
EMBEDDING_DIM = 64
NUM_HEADS = 4
NUM_LAYERS = 2
BATCHES = (1, 64, 1024)

OURS = "ours: export.convert (ort default)"
OURS_TWIN = "ours, 2nd session (ort default)"
KERAS = "keras: MultiHeadAttention, model.export (ort default)"

#: As `benchmarks.cli.MODES`: seconds of timing per path and batch (batch 1:
#: batch1_budget_s), rounds of turns, calls per path at least.
MODES = {
    "full": dict(batches=BATCHES, budget_s=1.5, batch1_budget_s=4.0, rounds=10, min_calls=10, contrib_budget_s=1.0),
    "quick": dict(batches=BATCHES, budget_s=0.4, batch1_budget_s=1.0, rounds=3, min_calls=3, contrib_budget_s=0.3),
    "smoke": dict(batches=(1, 8), budget_s=0.01, batch1_budget_s=0.02, rounds=1, min_calls=2, contrib_budget_s=0.01),
}


def build_model():
    """The classifier under test, with `MultiHeadScaledDotAttention`: untrained, its weights made random.

    Random, not the initializers' zero biases: tf2onnx drops an ``Add`` of a
    zero constant, which a trained model would not give it.
    """
    from benchmarks.zoo import jittered

    return jittered(_build())


def _build():
    """The transformer of `keras_attn.build_text_classifier`, its feed-forward in relu.

    relu, not the builder's gelu: Keras's ``model.export`` writes exact gelu
    as an ``Erfc`` node, which is no ONNX op, and its file does not load
    (onnxruntime 1.32: "No Op registered for Erfc"); there would be nothing
    to compare with. Dropout off (inference drops it anyway).
    """
    from keras_attn import build_text_classifier

    return build_text_classifier(
        VOCAB_SIZE, NUM_CLASSES, seq_len=SEQ_LEN, encoder="transformer", embedding_dim=EMBEDDING_DIM,
        units=2 * EMBEDDING_DIM, num_heads=NUM_HEADS, num_layers=NUM_LAYERS, feed_forward_activation="relu",
        embedding_dropout=0.0, attention_dropout=0.0, pooled_dropout=0.0, name="transformer_classifier",
    )


def with_keras_attention(model):
    """``model`` with every `MultiHeadScaledDotAttention` replaced by ``keras.layers.MultiHeadAttention``.

    Same config (less the keys Keras's class does not take) and the same
    weights, so both models compute the same function wherever no query
    row is fully masked.
    """
    import keras

    from keras_attn import MultiHeadScaledDotAttention

    keras_keys = set(keras.layers.MultiHeadAttention(num_heads=1, key_dim=1).get_config())

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, MultiHeadScaledDotAttention):
            return keras.layers.MultiHeadAttention.from_config({k: v for k, v in config.items() if k in keras_keys})
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    replaced = [type(layer).__name__ for layer in twin.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    if not replaced or "MultiHeadScaledDotAttention" in replaced:
        raise AssertionError(f"the attention layers were not replaced: {replaced}")
    return twin


def sentence_ids(data_dir=None, rows: int = 3000) -> tuple[np.ndarray, str]:
    """int32 ids of real (or generated) sentences padded with 0 to `SEQ_LEN`, no row empty; and their source."""
    from benchmarks import inputs
    from export.text import TextEncoder

    texts, source = inputs.load_texts(data_dir)
    if not texts:
        texts, source = inputs.generated_texts([f"word{i}" for i in range(VOCAB_SIZE)]), f"generated sentences ({source})"
    encoder = TextEncoder.fit(texts, num_words=VOCAB_SIZE, seq_len=SEQ_LEN)
    ids = encoder.encode(texts)
    ids = ids[(ids != 0).any(axis=1)]
    ids = ids[np.random.default_rng(0).permutation(len(ids))][:rows]
    return ids.astype(np.int32), source


def check_same_function(ours, theirs, ids: np.ndarray) -> dict[str, float]:
    """Max |ours - Keras's| per output in Keras on ``ids`` (no empty row), and per attention layer on random floats.

    Raises AssertionError beyond 1e-5: the comparison would time two different functions.
    """
    import keras

    rng = np.random.default_rng(1)
    diffs = {}
    a, b = ours(ids, training=False), theirs(ids, training=False)
    for name in a:
        diffs[name] = float(np.max(np.abs(np.asarray(a[name]) - np.asarray(b[name]))))
    pairs = [(x, y) for x, y in zip(ours.layers, theirs.layers) if isinstance(y, keras.layers.MultiHeadAttention)]
    for x, y in pairs:
        h = rng.normal(size=(8, SEQ_LEN, EMBEDDING_DIM)).astype(np.float32)
        keep = np.arange(SEQ_LEN)[None, None, :] < rng.integers(1, SEQ_LEN + 1, (8, 1, 1))
        out_x, w_x = x(h, h, attention_mask=keep, return_attention_scores=True)
        out_y, w_y = y(h, h, attention_mask=keep, return_attention_scores=True)
        diffs[f"{x.name} on floats"] = max(float(np.max(np.abs(np.asarray(out_x) - np.asarray(out_y)))),
                                           float(np.max(np.abs(np.asarray(w_x) - np.asarray(w_y)))))
    bad = {k: v for k, v in diffs.items() if not v <= 1e-5}
    if bad:  # not an assert: python -O must not time two different functions either
        raise AssertionError(f"the two models differ in Keras: {bad}")
    return diffs


def count_nodes(path: str | os.PathLike, optimized_path: str | os.PathLike) -> dict:
    """Nodes of the graph onnxruntime runs for ``path`` (default optimisation level), written to ``optimized_path``.

    ``einsum``: Einsum nodes (any domain); ``einsum_in_file``: those of the file itself. ``mask``: the padding mask's own
    computation, by type: the ``Equal`` comparing the ids (``tokens != 0``)
    and every node computed from it alone (with constants and shapes).
    ``mask_applied``: the nodes where such a value meets the activations
    (scores, weights, features), by type; an ``Add`` there is an additive
    mask. ``ops``: every node type with its count.
    """
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized_path)
    options.log_severity_level = 3  # not the warning that the saved graph may be machine-specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(optimized_path)).graph
    ids = {i.name for i in graph.input}
    consts = {t.name for t in graph.initializer}
    mask_side: set[str] = set()
    data_side: set[str] = set()
    mask_nodes: dict[str, int] = {}
    applied: dict[str, int] = {}
    ops: dict[str, int] = {}
    einsum = 0
    # Nodes come topologically sorted in the graph onnxruntime saves.
    for node in graph.node:
        kind = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops[kind] = ops.get(kind, 0) + 1
        einsum += node.op_type == "Einsum"
        inputs = [i for i in node.input if i and i not in consts]
        from_mask = any(i in mask_side for i in inputs)
        from_data = any(i in data_side or i in ids for i in inputs)
        if node.op_type == "Equal" and any(i in ids for i in inputs):
            from_mask, from_data = True, False  # tokens != 0 (NotEqual is Equal then Not)
        if node.op_type in ("Shape", "Size"):
            continue
        if from_mask and from_data:
            applied[kind] = applied.get(kind, 0) + 1
            data_side.update(node.output)
        elif from_mask:
            mask_nodes[kind] = mask_nodes.get(kind, 0) + 1
            mask_side.update(node.output)
        elif from_data:
            data_side.update(node.output)
    in_file = sum(n.op_type == "Einsum" for n in onnx.load(str(path)).graph.node)
    return {"einsum": einsum, "einsum_in_file": in_file, "mask": mask_nodes, "mask_applied": applied, "nodes": len(graph.node), "ops": ops}


def _export_both(ours_model, keras_model, folder: Path) -> dict:
    """Write ours with `export.convert.convert` and Keras's with ``model.export``; their paths, seconds and parity."""
    from benchmarks.export_zoo import keras_export_status
    from export.cli import silenced_stderr
    from export.convert import convert
    from export.signature import ModelSignature

    ours, theirs = folder / "ours.onnx", folder / "keras_export.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), silenced_stderr():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        report = convert(ours_model, ours)
        convert_s = time.perf_counter() - t
    t = time.perf_counter()
    status, diff = keras_export_status(keras_model, theirs, ModelSignature.from_keras(keras_model))
    keras_s = time.perf_counter() - t
    if status != "ok":
        raise SystemExit(f"error: Keras's own export of the MultiHeadAttention model: {status} (max diff {diff})")
    return {"ours": str(ours), "keras": str(theirs), "convert_s": convert_s, "keras_export_s": keras_s,
            "parity_ours": max(report.parity.values()), "parity_keras": diff}


def _default_session(path: str):
    """A plain ``InferenceSession`` (no SessionOptions): ``run(ids)`` fetches every output."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    dtype = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}[spec.type]
    name = spec.name

    def run(ids, texts=None):
        return session.run(None, {name: ids if ids.dtype == dtype else ids.astype(dtype)})

    return run, {o.name: o.shape for o in session.get_outputs()}, spec.type


def _batch(ids: np.ndarray, rows: int) -> np.ndarray:
    return np.ascontiguousarray(ids[np.arange(rows) % len(ids)])


def _time_paths(runs: dict, ids: np.ndarray, mode: dict, progress, label: str, budget_key: str = "budget_s") -> dict:
    """``{batch: {path: summary}}``, each summary with its ratio to the first path's time (paired within rounds)."""
    from benchmarks import timing

    out = {}
    first = next(iter(runs))
    for batch in mode["batches"]:
        x = _batch(ids, batch) if isinstance(ids, np.ndarray) else ids(batch)
        budget = mode["batch1_budget_s"] if batch == 1 and budget_key == "budget_s" else mode[budget_key]
        samples = timing.time_batch(runs, x, None, budget_s=budget, rounds=mode["rounds"], min_calls=mode["min_calls"],
                                    progress=progress, label=f"{label}, batch {batch}")
        out[str(batch)] = {name: {**timing.summarize(rounds, batch),
                                  "speedup_vs_first": timing.paired_speedup(samples[first], rounds),
                                  "speedup_vs": {other: timing.paired_speedup(samples[other], rounds)
                                                 for other in samples if other != name}}
                           for name, rounds in samples.items()}
    return out


def run(options: argparse.Namespace) -> dict:
    """Do the whole run; return the results (what goes to JSON)."""
    from benchmarks import timing
    from benchmarks.cli import machine

    mode_name = "smoke" if options.smoke else "quick" if options.quick else "full"
    mode = MODES[mode_name]
    steps = 5 + mode["rounds"] * len(mode["batches"]) * (3 if options.contrib else 1)
    progress = timing.Progress(steps, enabled=not options.quiet)
    started = time.perf_counter()
    results: dict = {"schema": 1, "mode": mode_name, "settings": dict(mode), "machine": machine()}

    progress.step("importing TensorFlow and Keras")
    from export.cli import import_training, silenced_stderr

    with silenced_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras = import_training("keras")
        tf = import_training("tensorflow")
        import keras_attn  # noqa: F401 - registers the layers
    results["machine"].update(tensorflow=tf.__version__, keras=keras.__version__)

    progress.step("building both models and checking they agree in Keras")
    keras.utils.set_random_seed(0)
    ids, source = sentence_ids(options.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_model = build_model()
        keras_model = with_keras_attention(ours_model)
        agreement = check_same_function(ours_model, keras_model, ids[:64])
    lengths = (ids != 0).sum(axis=1)
    results["model"] = {"name": ours_model.name, "params": int(ours_model.count_params()), "vocab_size": VOCAB_SIZE,
                        "seq_len": SEQ_LEN, "embedding_dim": EMBEDDING_DIM, "num_heads": NUM_HEADS,
                        "num_layers": NUM_LAYERS, "keras_agreement_max_abs_diff": agreement}
    results["data"] = {"source": source, "rows": len(ids), "mean_tokens": float(lengths.mean()),
                       "min_tokens": int(lengths.min()), "max_tokens": int(lengths.max())}

    with contextlib.ExitStack() as stack:
        if options.workdir:
            folder = Path(options.workdir)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keras-attn-mha-")))
        progress.step("exporting: export.convert (ours) and keras model.export (Keras's layer)")
        files = _export_both(ours_model, keras_model, folder)
        results["export"] = {k: v for k, v in files.items() if k not in ("ours", "keras")}
        results["files"] = {"ours": os.path.getsize(files["ours"]), "keras": os.path.getsize(files["keras"])}

        progress.step("counting Einsum and mask nodes in the graphs onnxruntime optimises")
        results["graphs"] = {name: count_nodes(files[name], folder / f"{name}.optimized.onnx") for name in ("ours", "keras")}

        progress.step("opening default sessions")
        ours_run, ours_outputs, _ = _default_session(files["ours"])
        twin_run, _, _ = _default_session(files["ours"])
        keras_run, keras_outputs, keras_input = _default_session(files["keras"])
        results["sessions"] = {"ours_outputs": ours_outputs, "keras_outputs": keras_outputs, "keras_input": keras_input}
        sample = ids[:64]
        got_ours = dict(zip(ours_outputs, ours_run(sample)))
        got_keras = keras_run(sample)
        # Keras's file names its outputs after the graph: match by shape.
        by_shape = {tuple(np.shape(v)): v for v in got_keras}
        results["onnx_agreement_max_abs_diff"] = {
            name: float(np.max(np.abs(value - by_shape[value.shape]))) if value.shape in by_shape else None
            for name, value in got_ours.items()}
        runs = {KERAS: keras_run, OURS: ours_run, OURS_TWIN: twin_run}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results["timing"] = _time_paths(runs, ids, mode, progress, "model")
        del runs, ours_run, twin_run, keras_run
        if options.contrib:
            from benchmarks import multi_head_contrib

            check = np.concatenate([ids[:15], np.zeros((1, SEQ_LEN), np.int32)])  # and one empty text
            results["contrib_model"] = multi_head_contrib.run_model(
                files["ours"], {b: _batch(ids, b) for b in mode["batches"]}, check, mode, progress)

    if options.contrib:
        from benchmarks import multi_head_contrib

        results["contrib"] = multi_head_contrib.run(mode, progress)

    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["targets"] = targets(results)
    results["elapsed_s"] = time.perf_counter() - started
    return results


def targets(results: dict) -> list[dict]:
    """Ours at least as fast as Keras's file at every batch (the issue's target), as ``benchmarks.report`` lists them."""
    from benchmarks.report import at_least

    by_batch = results["timing"]
    ratios = {b: by[OURS]["speedup_vs_first"] for b, by in by_batch.items()}
    worst = min(ratios, key=ratios.get)
    out = [at_least(f"ours >= 1.0x keras export at batch {'/'.join(ratios)} (worst: batch {worst})", ratios[worst], 1.0)]
    graphs = results["graphs"]
    einsum = graphs["ours"]["einsum"]
    out.append({"name": "no Einsum on the hot path (ours)", "measured": einsum, "threshold": "== 0",
                "status": "PASS" if einsum == 0 else "FAIL"})
    adds = graphs["ours"]["mask_applied"].get("Add", 0)
    out.append({"name": f"one additive mask per attention layer (ours: {adds} Add for {NUM_LAYERS} layers)",
                "measured": adds, "threshold": f"== {NUM_LAYERS}", "status": "PASS" if adds == NUM_LAYERS else "FAIL"})
    return out


def _rate(x: float) -> str:
    return f"{x / 1e3:.3g}k" if x >= 1e3 else f"{x:.3g}"


def _ops(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def markdown(results: dict) -> str:
    m, model, data = results["machine"], results["model"], results["data"]
    out = [
        f"# MultiHeadScaledDotAttention vs keras.layers.MultiHeadAttention on onnxruntime "
        f"({results['mode']} run, {results['elapsed_s']:.0f} s)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), load average (1 min) "
        f"{m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}; {m['date']}",
        f"- Python {m['python']}, onnxruntime {m['onnxruntime']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}",
        f"- Model: {model['params']:,} params, {model['num_layers']} pre-norm blocks, {model['num_heads']} heads, "
        f"dim {model['embedding_dim']}, seq_len {model['seq_len']}; inputs: {data['rows']} rows of "
        f"{data['min_tokens']}-{data['max_tokens']} tokens (mean {data['mean_tokens']:.1f}), {data['source']}",
        "- Same function in Keras: max |ours - Keras's| "
        + ", ".join(f"{k} {v:.1e}" for k, v in model["keras_agreement_max_abs_diff"].items()),
        f"- Files: ours {results['files']['ours'] / 1024:.0f} KiB (export.convert, verified, max diff "
        f"{results['export']['parity_ours']:.1e}, {results['export']['convert_s']:.1f} s); Keras's "
        f"{results['files']['keras'] / 1024:.0f} KiB (model.export, max diff {results['export']['parity_keras']:.1e} "
        f"against its model, {results['export']['keras_export_s']:.1f} s); ours vs Keras's file: "
        + ", ".join(f"{k} {v:.1e}" for k, v in results["onnx_agreement_max_abs_diff"].items() if v is not None),
        "",
        "## Speed (default InferenceSession, every output fetched; sentences/s of the median call; "
        "ratio: median over rounds of the ratio within a round)",
        "",
        "| batch | keras export sent/s | ours sent/s | ours / keras | noise floor: ours 2nd session / 1st | p99 ms keras / ours |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for batch, by in results["timing"].items():
        k, o, t = by[KERAS], by[OURS], by[OURS_TWIN]
        out.append(f"| {batch} | {_rate(k['sentences_per_s'])} | {_rate(o['sentences_per_s'])} | "
                   f"{o['speedup_vs_first']:.2f}x | {t['speedup_vs'][OURS]:.2f}x | {k['p99_ms']:.2f} / {o['p99_ms']:.2f} |")
    g = results["graphs"]
    out += ["", "## The graphs onnxruntime runs (default optimisation level)", "",
            f"Einsum on the hot path: ours {g['ours']['einsum']}, keras {g['keras']['einsum']} (in the files: ours "
            f"{g['ours']['einsum_in_file']}, keras {g['keras']['einsum_in_file']})", "",
            "| file | nodes | Einsum | mask computation (from the ids) | where the mask meets the activations |",
            "|---|--:|--:|---|---|"]
    for name in ("ours", "keras"):
        out.append(f"| {name} | {g[name]['nodes']} | {g[name]['einsum']} | {_ops(g[name]['mask'])} | "
                   f"{_ops(g[name]['mask_applied'])} |")
    if "contrib" in results:
        from benchmarks import multi_head_contrib

        out += ["", multi_head_contrib.markdown(results["contrib"])]
    if "contrib_model" in results:
        from benchmarks import multi_head_contrib

        out += ["", multi_head_contrib.markdown_model(results["contrib_model"])]
    out += ["", "## Targets", ""]
    for t in results["targets"]:
        value = "-" if t["measured"] is None else f"{t['measured']:.3g}"
        out.append(f"- **{t['status']}** {t['name']}: {value} (target {t['threshold']})")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.multi_head",
        description=(
            "Time a transformer text classifier built with MultiHeadScaledDotAttention and exported by "
            "export.convert against the same model with keras.layers.MultiHeadAttention exported by Keras's "
            "model.export(format='onnx'), both on default onnxruntime sessions at batch 1, 64 and 1024; count "
            "the Einsum and mask nodes onnxruntime runs. Markdown report on stdout, progress on stderr."
        ),
        epilog="Numbers on a shared machine drift: compare ratios from one run, not absolute times across runs.",
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer repeats: about a minute")
    speed.add_argument("--smoke", action="store_true", help="tiny batches and repeats, to check the harness runs (seconds)")
    parser.add_argument("--contrib", action="store_true", help="also time one attention core as "
                        "com.microsoft.MultiHeadAttention and opset-23 Attention against the plain subgraph")
    parser.add_argument("--data", metavar="DIR", help="the sentiment data set folder (default: $KERAS_ATTN_DATA; "
                        "without either, generated sentences)")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH (default: none)")
    parser.add_argument("--workdir", metavar="DIR", help="keep the exported files in DIR (default: a temporary folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv=None) -> int:
    options = _parser().parse_args(argv)
    from export.loading import quiet_libraries

    quiet_libraries()
    results = run(options)
    print(markdown(results))
    if options.json:
        from export.files import atomic_file

        path = Path(options.json)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        if not options.quiet:
            print(f"wrote {path} ({results['elapsed_s']:.0f}s run)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

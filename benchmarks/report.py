"""The markdown report and the pass/fail targets, both computed from the results dict."""

from __future__ import annotations

from benchmarks.paths import KERAS_ONNX, ORT_DEFAULT, ORT_DEFAULT_TWIN, RUNTIME

__all__ = ["RUNTIME", "TEXT", "at_least", "markdown", "noise_floor", "targets"]

TEXT = "runtime fp32 text"
KERAS_COLD = "keras load_model + predict"
RUNTIME_COLD = "runtime SentimentPredictor"
HALF = "bundled model, half-length rows"
DENSE = "bundled model, dense full-length rows"
TUTORIAL = "tutorial model (Flatten), sentences"
#: Batch sizes at which the runtime must match both default sessions, on every model.
COMPARED_BATCHES = ("1", "64", "1024")
#: Throughput may dip this much from one batch size to the next larger one and
#: count as not falling: the spread of repeated interleaved runs here.
NOISE = 0.05


def _compared(results: dict, path: str) -> dict:
    """``{model: {batch: summary}}`` of ``path`` for the models compared at `COMPARED_BATCHES`."""
    return {"bundled": results["paths"].get(path, {}),
            "tutorial": results.get("cases", {}).get(TUTORIAL, {}).get(path, {})}


def noise_floor(results: dict) -> tuple[float, float] | None:
    """Lowest and highest ratio of the second default session on our file to the first.

    Both run the same call on the same file, so their spread over the
    compared models and batches is what the comparison of the runtime with
    our file on a default session can tell apart in this run.
    """
    ratios = [by[b]["speedup_vs"][ORT_DEFAULT] for by in _compared(results, ORT_DEFAULT_TWIN).values()
              for b in COMPARED_BATCHES if ORT_DEFAULT in by.get(b, {}).get("speedup_vs", {})]
    return (min(ratios), max(ratios)) if ratios else None


def _target(name: str, measured, threshold: str, ok) -> dict:
    return {"name": name, "measured": measured, "threshold": threshold,
            "status": "n/a" if ok is None else "PASS" if ok else "FAIL"}


def at_least(name: str, measured, need: float, unit: str = "x") -> dict:
    return _target(name, measured, f">= {need}{unit}", None if measured is None else measured >= need)


def targets(results: dict) -> list[dict]:
    """The issue's targets as ``{"name", "measured", "threshold", "status"}`` (PASS, FAIL or n/a)."""
    runtime = results["paths"].get(RUNTIME, {})
    text = results["paths"].get(TEXT, {})
    cases = results.get("cases", {})
    out = []
    for batch, need in (("1", 15.0), ("1024", 2.0)):
        out.append(at_least(f"runtime vs tf.function, sentences, batch {batch}",
                             runtime.get(batch, {}).get("speedup_vs_baseline"), need))
    for case, need in ((HALF, 1.5), (DENSE, 1.3)):
        out.append(at_least(f"runtime vs tf.function, {case}, batch 1024",
                             cases.get(case, {}).get(RUNTIME, {}).get("1024", {}).get("speedup_vs_baseline"), need))
    # Every model and batch size against both files on default InferenceSessions.
    models = _compared(results, RUNTIME)
    for other in (KERAS_ONNX, ORT_DEFAULT):
        ratios = {f"{name} batch {b}": by[b]["speedup_vs"][other]
                  for name, by in models.items() for b in COMPARED_BATCHES if b in by and other in by[b].get("speedup_vs", {})}
        worst = min(ratios, key=ratios.get) if ratios else None
        out.append(at_least(f"runtime vs {other}, every model and batch in {'/'.join(COMPARED_BATCHES)} (worst: {worst})",
                             ratios.get(worst), 1.0))
    # Throughput must not fall as the batch grows: the sweep times batch sizes in
    # turns, and each step's ratio is taken within a round (load drifts between rounds).
    growth = results.get("runtime_batch_growth") or {}
    if growth:
        worst = min(growth, key=growth.get)
        out.append(at_least(f"runtime throughput as the batch grows {' '.join(growth)} (worst step: {worst})",
                             growth[worst], round(1 - NOISE, 2), ""))
    else:
        out.append(_target("runtime throughput as the batch grows 64->256->1024", None, f">= {1 - NOISE}", None))
    # Text over ids throughput, paired within rounds: ids time / text time. Issue 20
    # asks 0.8 at batch 1024; every batch keeps the older floor of 0.5.
    shares = {b: 1 / runtime[b]["speedup_vs"][TEXT] for b in text if TEXT in runtime.get(b, {}).get("speedup_vs", {})}
    if shares:
        worst = min(shares, key=shares.get)
        out.append(at_least(f"raw-text vs token-id throughput (worst: batch {worst})", shares[worst], 0.5, ""))
        out.append(at_least("raw-text vs token-id throughput, batch 1024", shares.get("1024"), 0.8, ""))
    cold = results.get("cold_start", {})
    if KERAS_COLD in cold and RUNTIME_COLD in cold:
        ratio = cold[KERAS_COLD]["wall_s"] / cold[RUNTIME_COLD]["wall_s"]
        out.append(at_least("cold start: Keras wall time / runtime wall time", ratio, 10))
    if RUNTIME_COLD in cold:
        rss = cold[RUNTIME_COLD]["peak_rss_mib"]
        out.append(_target("cold start: runtime peak RSS (MiB)", rss, "<= 100", rss <= 100))
    return out


def _rate(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict) -> str:
    m = results["machine"]
    batches = [str(b) for b in results["batches"]]
    paths = results["paths"]
    base = results["baseline"]
    fl = results["flops"]
    rate = results["matmul"]["flops_per_s"]
    out = [
        f"# keras-attn benchmarks ({results['mode']} run, {results['elapsed_s']:.0f} s)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), load average "
        f"{m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}; {m['date']}",
        f"- Python {m['python']}, onnxruntime {m['onnxruntime']}, TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}, numpy {m['numpy']}",
        f"- Model: {results['model']['source']} ({results['model']['params']:,} params, seq_len "
        f"{results['model']['seq_len']}); inputs: {results['data']['sentences']} sentences, {results['data']['source']}",
        f"- FLOPs per sentence: {_si(fl['total'])}FLOP (" + ", ".join(f"{k} {_si(v)}" for k, v in fl["layers"].items())
        + (f"; not counted: {', '.join(fl['elementwise'])}" if fl.get("elementwise") else "")
        + f"); numpy sgemm {results['matmul']['n']}^2 best of {results['matmul']['repeats']}: {_si(rate)}FLOP/s",
        "",
        f"## Speed relative to {base} (x faster per call; median over rounds of the ratio of medians "
        "within a round; higher is better)",
        "",
    ]
    out += _table(["path"] + [f"batch {b}" for b in batches],
                  [[name] + [f"{by[b]['speedup_vs_baseline']:.2f}x" for b in batches] for name, by in paths.items()])
    out += ["", "## Absolute (median; sentences/s; roofline = achieved FLOP/s / numpy sgemm FLOP/s)", ""]
    rows = []
    for name, by in paths.items():
        best = max(by.values(), key=lambda s: s["sentences_per_s"])
        rows.append([name, f"{by['1']['p50_ms']:.3f}" if "1" in by else "-", f"{by['1']['p99_ms']:.3f}" if "1" in by else "-"]
                    + [_rate(by[b]["sentences_per_s"]) for b in batches] + [f"{100 * best['roofline_share']:.1f}%"])
    out += _table(["path", "p50 ms b=1", "p99 ms b=1"] + [f"sent/s b={b}" for b in batches] + ["roofline (best)"], rows)
    if TEXT in paths and RUNTIME in paths:
        out += ["", "## Raw text (encoding included) vs token ids, runtime fp32", ""]
        out += _table(["batch", "ids sent/s", "text sent/s", "text / ids"],
                      [[b, _rate(paths[RUNTIME][b]["sentences_per_s"]), _rate(paths[TEXT][b]["sentences_per_s"]),
                        f"{paths[TEXT][b]['sentences_per_s'] / paths[RUNTIME][b]['sentences_per_s']:.2f}"] for b in batches])
    sweep = results.get("runtime_batch_sweep")
    if sweep:
        best = max(s["sentences_per_s"] for s in sweep.values())
        out += ["", "## runtime fp32 across batch sizes (batch sizes timed in turns; used by the batch-size target)", ""]
        out += _table(["batch"] + list(sweep), [["sent/s"] + [_rate(s["sentences_per_s"]) for s in sweep.values()],
                                                ["of best"] + [f"{s['sentences_per_s'] / best:.2f}" for s in sweep.values()]])
        growth = results.get("runtime_batch_growth") or {}
        if growth:
            out += ["", "Throughput over the next smaller batch size (paired within rounds): "
                    + ", ".join(f"{step} {ratio:.2f}x" for step, ratio in growth.items())]
    for case, by_path in results.get("cases", {}).items():
        case_batches = list(next(iter(by_path.values())))
        out += ["", f"## {case}: speed relative to {base}", ""]
        out += _table(["path"] + [f"batch {b}" for b in case_batches] + [f"sent/s b={b}" for b in case_batches],
                      [[name] + [f"{by[b]['speedup_vs_baseline']:.2f}x" for b in case_batches]
                       + [_rate(by[b]["sentences_per_s"]) for b in case_batches] for name, by in by_path.items()])
    cold = results.get("cold_start", {})
    if cold:
        out += ["", "## Cold start (new process: import, load, first prediction; median wall, max peak RSS)", ""]
        out += _table(["process", "wall s", "import s", "load s", "first predict s", "peak RSS MiB", "runs"],
                      [[k, f"{c['wall_s']:.2f}", f"{c['import_s']:.2f}", f"{c['load_s']:.3f}",
                        f"{c['first_predict_s']:.3f}", f"{c['peak_rss_mib']:.0f}", str(c["repeats"])] for k, c in cold.items()])
    e = results["export"]
    steps = ", ".join(f"{k} {v:.2f}" for k, v in e["convert_steps_s"].items() if k != "total")
    out += ["", "## Export and files", "",
            f"- export.to_onnx.convert (fp32 + int8, verified): {e['convert_s']:.2f} s ({steps}); "
            f"keras model.export(format='onnx'): {e['keras_export_s']:.2f} s",
            "- sizes: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in results["files"].items()),
            "- max |probability - tf.function| on 64 sentences: "
            + ", ".join(f"{k} {v:.1e}" for k, v in results["agreement_max_abs_diff"].items() if k != base),
            "", "## Targets", ""]
    for t in results["targets"]:
        value = "-" if t["measured"] is None else f"{t['measured']:.3g}"
        out.append(f"- **{t['status']}** {t['name']}: {value} (target {t['threshold']})")
    floor = noise_floor(results)
    if floor:
        out += ["", f"Noise floor of the comparisons with default sessions: a second default session on our file "
                    f"ran at {floor[0]:.3g}x to {floor[1]:.3g}x of the first, over the same models and batches."]
    return "\n".join(out)

"""``python -m benchmarks``: options, the order of the run, and the optional JSON file."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["MODES", "main", "run"]

ALL_BATCHES = (1, 32, 64, 256, 512, 1024)
#: Batch sizes of the other cases (the tutorial's model, half-length and dense rows).
CASE_BATCHES = (1, 64, 1024)

#: The cases besides the bundled model on real sentences: name -> (model, rows).
#: "sentences" are the real (or generated) sentences; "half" rows hold
#: seq_len // 2 words, "dense" rows seq_len words (no padding to skip).
CASES = {
    "bundled model, half-length rows": ("bundled", "half"),
    "bundled model, dense full-length rows": ("bundled", "dense"),
    "tutorial model (Flatten), sentences": ("tutorial", "sentences"),
}

#: budget_s: seconds of timing per path and batch size (batch 1: batch1_budget_s,
#: for its p99); rounds: turns the paths take; cold_repeats: new processes per kind.
MODES = {
    "full": dict(batches=ALL_BATCHES, case_batches=CASE_BATCHES, budget_s=1.5, batch1_budget_s=5.0, rounds=10,
                 min_calls=10, cold_repeats=3, matmul=(1024, 10)),
    "quick": dict(batches=ALL_BATCHES, case_batches=CASE_BATCHES, budget_s=0.4, batch1_budget_s=2.0, rounds=3,
                  min_calls=3, cold_repeats=1, matmul=(1024, 5)),
    "smoke": dict(batches=(1, 8, 64), case_batches=(1, 8), budget_s=0.01, batch1_budget_s=0.02, rounds=1,
                  min_calls=2, cold_repeats=1, matmul=(256, 3)),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Time the sentiment model on Keras (predict, eager), tf.function, Keras's own ONNX export "
            "and our file on default onnxruntime sessions, and export.runtime (fp32, int8), on the same "
            "sentences; then half-length and dense rows, and the tutorial's Flatten model. Prints a "
            "markdown report (ratios against tf.function first) with pass/fail lines for the speed "
            "targets to stdout; progress goes to stderr."
        ),
        epilog="Numbers on a shared machine drift: compare ratios from one run, not absolute times across runs.",
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer repeats: about a minute")
    speed.add_argument("--smoke", action="store_true", help="tiny batches and repeats, to check the harness runs (seconds)")
    parser.add_argument("--model", metavar="PATH", help="a .keras model saved with its text encoder "
                        "(default: the bundled pretrained model, else an untrained stand-in)")
    parser.add_argument("--data", metavar="DIR", help="the sentiment data set folder (default: $KERAS_ATTN_DATA; "
                        "without either, sentences generated from the model's vocabulary)")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH (default: none)")
    parser.add_argument("--batches", metavar="N,N", help="batch sizes to time (default: " +
                        ",".join(map(str, ALL_BATCHES)) + ")")
    parser.add_argument("--threads", type=int, metavar="N", help="most threads per call for export.runtime "
                        "(default: its own default, the usable cores)")
    parser.add_argument("--workdir", metavar="DIR", help="keep the exported files in DIR (default: a temporary folder)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start processes")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), which every speed figure must carry."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    import numpy
    import onnxruntime

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _time_case(runs: dict, ids_by_batch: dict, texts_by_batch: dict, mode: dict, progress, label: str) -> dict:
    """``{path: {batch: summary}}`` for one set of paths; the runtime's summary also holds its ratio to each path."""
    from benchmarks import paths as paths_mod, timing

    per_path: dict[str, dict] = {name: {} for name in runs}
    for batch, ids in ids_by_batch.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples = timing.time_batch(
                runs, ids, texts_by_batch.get(batch), budget_s=mode["batch1_budget_s"] if batch == 1 else mode["budget_s"],
                rounds=mode["rounds"], min_calls=mode["min_calls"], progress=progress, label=f"{label}, batch {batch}",
            )
        for name, rounds in samples.items():
            summary = timing.summarize(rounds, batch)
            summary["speedup_vs_baseline"] = timing.paired_speedup(samples[paths_mod.BASELINE], rounds)
            per_path[name][str(batch)] = summary
        runtime = per_path[paths_mod.RUNTIME][str(batch)]
        runtime["speedup_vs"] = {name: timing.paired_speedup(rounds, samples[paths_mod.RUNTIME])
                                 for name, rounds in samples.items() if name != paths_mod.RUNTIME}
        if paths_mod.ORT_DEFAULT_TWIN in samples:
            per_path[paths_mod.ORT_DEFAULT_TWIN][str(batch)]["speedup_vs"] = {
                paths_mod.ORT_DEFAULT: timing.paired_speedup(samples[paths_mod.ORT_DEFAULT],
                                                             samples[paths_mod.ORT_DEFAULT_TWIN])}
    return per_path


def _export(model, encoder, folder: Path, quantize: bool):
    """Our file (and its int8 copy) and Keras's own ONNX export of ``model``; returns paths and seconds."""
    from export.cli import silenced_stderr
    from export.to_onnx import convert

    ours, keras_onnx = folder / f"{model.name}.onnx", folder / f"{model.name}_keras_export.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), silenced_stderr():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        report = convert(model, ours, quantize=quantize, encoder=encoder)
        convert_s = time.perf_counter() - t
        t = time.perf_counter()
        model.export(str(keras_onnx), format="onnx")
        keras_export_s = time.perf_counter() - t
    int8 = report.quantization.path if report.quantization else None
    return ours, int8, keras_onnx, report, convert_s, keras_export_s


def run(options: argparse.Namespace) -> dict:
    """Do the whole run; return the results (what goes to JSON)."""
    from benchmarks import coldstart, flops, inputs, paths as paths_mod, timing

    mode_name = "smoke" if options.smoke else "quick" if options.quick else "full"
    mode = dict(MODES[mode_name])
    if options.batches:
        mode["batches"] = tuple(sorted({int(b) for b in options.batches.split(",")}))
    batches = mode["batches"]
    case_batches = mode["case_batches"]
    cold_kinds = [] if options.no_cold else list(coldstart.CHILDREN)
    case_steps = sum(mode["rounds"] * len([b for b in case_batches if b > 1 or rows == "sentences"])
                     for _, rows in CASES.values())
    total = 8 + sum(mode["rounds"] for _ in batches) + case_steps + len(cold_kinds)
    progress = timing.Progress(total, enabled=not options.quiet)
    started = time.perf_counter()
    results: dict = {"schema": 2, "mode": mode_name, "settings": {k: v for k, v in mode.items()},
                     "machine": machine()}

    progress.step("importing TensorFlow and Keras")
    from export.cli import import_training, silenced_stderr

    with silenced_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras = import_training("keras")
        tf = import_training("tensorflow")

        import keras_attn
        from keras_attn.models import TUTORIAL
    results["machine"].update(tensorflow=tf.__version__, keras=keras.__version__)

    with contextlib.ExitStack() as stack:
        if options.workdir:
            workdir = Path(options.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keras-attn-bench-")))

        progress.step("loading sentences and the model")
        texts, data_source = inputs.load_texts(options.data)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            model_path, model_source = inputs.resolve_model(options.model, workdir, texts, progress.say)
            model = keras_attn.load_model(model_path)
        encoder = model.text_encoder
        if encoder is None:
            raise SystemExit(f"error: {model_path} carries no text encoder (save it with keras_attn.save_model)")
        texts, data_source = inputs.or_generated(texts, data_source, encoder.vocabulary)
        import numpy as np

        pool = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
        results["model"] = {"path": str(model_path), "source": model_source, "name": model.name,
                            "params": int(model.count_params()), "seq_len": encoder.seq_len,
                            "vocab_size": encoder.vocab_size}
        results["data"] = {"source": data_source, "sentences": len(texts)}

        progress.step("exporting: export.to_onnx.convert (fp32 + int8) and keras model.export")
        ours, int8, keras_onnx, report, convert_s, keras_export_s = _export(model, encoder, workdir, quantize=True)
        results["export"] = {"convert_s": convert_s, "convert_steps_s": report.seconds, "keras_export_s": keras_export_s,
                             "parity": report.parity}
        results["files"] = {name: os.path.getsize(p) for name, p in
                            [("keras", model_path), ("keras onnx", keras_onnx), ("runtime fp32", ours),
                             ("runtime int8", int8)] if p}

        progress.step("FLOPs per sentence and numpy sgemm rate")
        results["flops"] = flops.count_flops(model, encoder.seq_len)
        n, reps = mode["matmul"]
        results["matmul"] = flops.matmul_rate(n, reps)

        progress.step("building the paths (tf.function trace, onnxruntime sessions)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = paths_mod.build_paths(model, str(keras_onnx), str(ours), str(int8) if int8 else None,
                                         threads=options.threads)
            sample_texts = pool[:64]
            results["agreement_max_abs_diff"] = paths_mod.check_agreement(runs, encoder.encode(sample_texts), sample_texts)

        def sentences(batch):
            return [pool[i % len(pool)] for i in range(batch)]

        texts_by_batch = {b: sentences(b) for b in batches}
        per_path = _time_case(runs, {b: encoder.encode(t) for b, t in texts_by_batch.items()}, texts_by_batch,
                              mode, progress, "sentences")
        # The batch-size target compares batch sizes: time them in turns too,
        # so that a load change between the per-batch blocks above cannot fake it.
        sweep_batches = [b for b in batches if b >= 32] or list(batches)
        progress.step(f"runtime fp32 across batch sizes {sweep_batches}, interleaved")
        runtime_run = runs[paths_mod.RUNTIME]
        sweep_inputs = {b: encoder.encode(sentences(b)) for b in sweep_batches}
        sweep = timing.time_batch(
            {str(b): (lambda ids, texts, x=x: runtime_run(x, None)) for b, x in sweep_inputs.items()},
            None, None, budget_s=mode["budget_s"], rounds=mode["rounds"], min_calls=mode["min_calls"],
        )
        results["runtime_batch_sweep"] = {b: timing.summarize(rounds, int(b)) for b, rounds in sweep.items()}
        # Throughput of each batch size over the next smaller one, paired within rounds.
        steps = [str(b) for b in sweep_batches if b in (64, 256, 1024)]
        results["runtime_batch_growth"] = {f"{a}->{b}": int(b) / int(a) * timing.paired_speedup(sweep[a], sweep[b])
                                           for a, b in zip(steps, steps[1:])}
        baseline = per_path[paths_mod.BASELINE]
        rate = results["matmul"]["flops_per_s"]
        for name, by_batch in per_path.items():
            for batch, summary in by_batch.items():
                summary["speedup_of_medians"] = baseline[batch]["median_ms"] / summary["median_ms"]
                summary["flops_per_s"] = summary["sentences_per_s"] * results["flops"]["total"]
                summary["roofline_share"] = summary["flops_per_s"] / rate
        results["baseline"] = paths_mod.BASELINE
        results["batches"] = list(batches)
        results["paths"] = per_path
        del runs

        # The other cases: the comparison paths only.
        progress.step("the tutorial's Flatten model: build and export")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            tutorial = keras_attn.build_sentiment_model(encoder.vocab_size, encoder.seq_len, name="tutorial", **TUTORIAL)
            tutorial_ours, _, tutorial_keras, *_ = _export(tutorial, encoder, workdir, quantize=False)
        case_runs = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case_runs["bundled"] = paths_mod.build_paths(model, str(keras_onnx), str(ours), threads=options.threads,
                                                         full=False)
            case_runs["tutorial"] = paths_mod.build_paths(tutorial, str(tutorial_keras), str(tutorial_ours),
                                                          threads=options.threads, full=False)
        results["cases"] = {}
        for case, (which, rows) in CASES.items():
            if rows == "sentences":
                case_texts = {b: sentences(b) for b in case_batches}
                case_ids = {b: encoder.encode(t) for b, t in case_texts.items()}
            else:
                words = encoder.seq_len // 2 if rows == "half" else encoder.seq_len
                case_texts = {}
                case_ids = {b: inputs.filled_ids(encoder, b, words) for b in case_batches if b > 1}
            results["cases"][case] = _time_case(case_runs[which], case_ids, case_texts, mode, progress, case)
        del case_runs

        results["cold_start"] = {}
        for kind in cold_kinds:
            progress.step(f"cold start: {kind} ({mode['cold_repeats']}x)")
            path = model_path if kind.startswith("keras") else ours
            results["cold_start"][kind] = coldstart.cold_start(kind, path, pool[0], mode["cold_repeats"])

    progress.step("report")
    from benchmarks import report as report_mod

    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["targets"] = report_mod.targets(results)
    results["elapsed_s"] = time.perf_counter() - started
    return results


def main(argv=None) -> int:
    options = _parser().parse_args(argv)
    if options.threads is not None and options.threads < 1:
        _parser().error("--threads must be >= 1")
    results = run(options)
    from benchmarks import report

    print(report.markdown(results))
    if options.json:
        from export.files import atomic_file

        path = Path(options.json)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        if not options.quiet:
            print(f"wrote {path} ({results['elapsed_s']:.0f}s run)", file=sys.stderr)
    return 0

"""``python -m benchmarks.batch``: `python -m export.batch`'s local engine, its speed and its memory.

    python -m benchmarks.batch                  # 100k sentences for speed, 1M rows for memory (~2 minutes)
    python -m benchmarks.batch --model m.onnx --json batch.json
    python -m benchmarks.batch --smoke          # seconds: checks the harness runs
    python -m benchmarks.batch --engine ray --engine spark   # and those engines on the 100k rows

Speed: the same sentences (the UCI set repeated to ``--rows``, else generated
ones) in one Parquet file; rows/s of `export.engines.local.score_files` on
that file against `TextClassifier.predict_proba` on the same texts held in
memory, in one process, taking turns for ``--rounds`` rounds (medians).
Memory: `python -m export.batch` on ``--big-rows`` rows of Parquet and of CSV,
each in a new process that reports its own peak RSS (``VmHWM``). With
``--engine``, ``python -m export.batch --engine ray|spark`` on the speed run's
file, timed whole (the cluster's or session's start-up is part of a user's
run). Markdown on
stdout with the CPU and load average; progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cli import cpu_name
from benchmarks.inputs import REPO, generated_texts, load_texts

__all__ = ["TARGETS", "main", "run"]

#: (name, figure, goal, at least?) of the report's pass/fail lines.
TARGETS = (
    ("local engine rows/s vs predict_proba in memory", "speedup", 0.9, True),
    ("peak RSS, Parquet input (MiB)", "parquet_mib", 300, False),
    ("peak RSS, CSV input (MiB)", "csv_mib", 300, False),
)

# A child that runs the command and prints its own peak RSS as its last stderr line.
_CHILD = """
import sys
from export.batch import main
status = main(sys.argv[1:])
with open("/proc/self/status") as status_file:
    hwm = next(int(line.split()[1]) for line in status_file if line.startswith("VmHWM:"))
print(hwm, file=sys.stderr)
sys.exit(status)
"""


def _model(path, folder: Path, say) -> Path:
    if path:
        return Path(path)
    from export.to_onnx import convert
    from keras_attn import load_pretrained

    say("exporting the bundled model")
    out = folder / "sentiment.onnx"
    convert(load_pretrained(), out)
    return out


def _texts(rows: int, data_dir, classifier) -> tuple[list[str], str]:
    texts, origin = load_texts(data_dir)
    if not texts:
        texts, origin = generated_texts(classifier.encoder.vocabulary), f"generated sentences ({origin})"
    repeated = (texts * (rows // len(texts) + 1))[:rows]
    return repeated, origin


def _peak_rss_mib(model: Path, source: Path, output: Path) -> tuple[float, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model), str(source), "-o", str(output), "--overwrite"],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"export.batch failed on {source.name}: {done.stderr.strip()[-500:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - started


def _engine_rows_s(model: Path, source: Path, output: Path, engine: str, rows: int) -> float:
    """Rows/s of ``python -m export.batch --engine ENGINE``, start-up of its cluster or session included."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "export.batch", str(model), str(source), "-o", str(output), "--overwrite", "--engine", engine],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"export.batch --engine {engine} failed: {done.stderr.strip()[-500:]}")
    return rows / (time.perf_counter() - started)


def run(
    model=None, rows=100_000, big_rows=1_000_000, rounds=3, data_dir=None, engines=(), say=lambda message: None,
) -> dict:
    """Every figure of the report, as a dict."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from export.engines.local import score_files
    from export.runtime import TextClassifier
    from export.tables import read_table

    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = _model(model, work, say)
        classifier = TextClassifier(model)
        texts, origin = _texts(rows, data_dir, classifier)
        pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), work / "texts.parquet")
        table = read_table(work / "texts.parquet")
        classifier.predict_proba(texts[:2000])  # warm up
        in_memory, engine = [], []
        for r in range(rounds):
            say(f"speed, round {r + 1}/{rounds}")
            t = time.perf_counter()
            classifier.predict_proba(texts)
            in_memory.append(time.perf_counter() - t)
            t = time.perf_counter()
            score_files(classifier, table, work / "scored", overwrite=True)
            engine.append(time.perf_counter() - t)
        engine_rates = {}
        for name in engines:
            say(f"--engine {name}, {rows:,} rows")
            engine_rates[name] = _engine_rows_s(model, work / "texts.parquet", work / "scored", name, rows)
        big, _ = _texts(big_rows, data_dir, classifier)
        pq.write_table(pa.table({"id": np.arange(len(big)), "text": big}), work / "big.parquet")
        with open(work / "big.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            writer.writerows(enumerate(big))
        del big
        say(f"memory: {big_rows:,} rows of Parquet")
        parquet_mib, parquet_s = _peak_rss_mib(model, work / "big.parquet", work / "out")
        say(f"memory: {big_rows:,} rows of CSV")
        csv_mib, csv_s = _peak_rss_mib(model, work / "big.csv", work / "out")
    predict_rate = rows / float(np.median(in_memory))
    engine_rate = rows / float(np.median(engine))
    return {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_start": load_start,
                    "load_average_end": list(os.getloadavg())},
        "data": origin,
        "rows": rows,
        "big_rows": big_rows,
        "predict_proba_rows_s": predict_rate,
        "engine_rows_s": engine_rate,
        "speedup": engine_rate / predict_rate,
        "engines_rows_s": engine_rates,
        "parquet_mib": parquet_mib,
        "parquet_rows_s": big_rows / parquet_s,
        "csv_mib": csv_mib,
        "csv_rows_s": big_rows / csv_s,
    }


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, load average {m['load_average_start'][0]:.2f} -> "
        f"{m['load_average_end'][0]:.2f}; {results['data']}",
        "",
        "| what | rows | rows/s | peak RSS |",
        "|---|--:|--:|--:|",
        f"| `TextClassifier.predict_proba`, texts in memory | {results['rows']:,} | {results['predict_proba_rows_s']:,.0f} | |",
        f"| `export.engines.local.score_files`, Parquet -> Parquet | {results['rows']:,} | {results['engine_rows_s']:,.0f} | |",
        f"| `python -m export.batch`, Parquet (whole process) | {results['big_rows']:,} | {results['parquet_rows_s']:,.0f} "
        f"| {results['parquet_mib']:.0f} MiB |",
        f"| `python -m export.batch`, CSV (whole process) | {results['big_rows']:,} | {results['csv_rows_s']:,.0f} "
        f"| {results['csv_mib']:.0f} MiB |",
        *(
            f"| `python -m export.batch --engine {name}`, Parquet (whole process, start-up included) "
            f"| {results['rows']:,} | {rate:,.0f} | |"
            for name, rate in results.get("engines_rows_s", {}).items()
        ),
        "",
    ]
    for name, key, goal, at_least in TARGETS:
        value = results[key]
        ok = value >= goal if at_least else value <= goal
        lines.append(f"- **{'PASS' if ok else 'FAIL'}** {name}: {value:.2f} (goal: {'>=' if at_least else '<='} {goal})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batch",
        description="Speed and memory of python -m export.batch's local engine against TextClassifier.predict_proba.",
    )
    parser.add_argument("--model", metavar="M.onnx", help="a text model (default: the bundled model, exported)")
    parser.add_argument("--data-dir", help="the UCI folder (default: $KERAS_ATTN_DATA; else generated sentences)")
    parser.add_argument("--rows", type=int, default=100_000, metavar="N", help="rows of the speed run (default: 100000)")
    parser.add_argument("--big-rows", type=int, default=1_000_000, metavar="N", help="rows of the memory runs (default: 1000000)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N", help="turns each path takes (default: 3)")
    parser.add_argument(
        "--engine", action="append", choices=("ray", "spark"), default=[], dest="engines",
        help="also time python -m export.batch --engine ENGINE on the speed run's file (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness runs")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)
    for name in ("rows", "big_rows", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.smoke:
        args.rows, args.big_rows, args.rounds = 2000, 5000, 1
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda m: None)
    results = run(args.model, args.rows, args.big_rows, args.rounds, args.data_dir, args.engines, say)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from export.cli import quiet_tensorflow, run as run_cli

    quiet_tensorflow()
    sys.exit(run_cli(main))

"""``python -m benchmarks.batch``: `python -m export.batch`'s local engine, its speed and its memory.

    python -m benchmarks.batch                  # 100k sentences for speed, 1M rows for memory (~2 minutes)
    python -m benchmarks.batch --model m.onnx --json batch.json
    python -m benchmarks.batch --smoke          # seconds: checks the harness runs
    python -m benchmarks.batch --engine ray --engine spark   # and those engines, once started

Speed: the same sentences (the UCI set repeated to ``--rows``, else generated
ones) in one Parquet file; rows/s of `export.engines.local.score_files` on
that file against `TextClassifier.predict_proba` on the same texts held in
memory, in one process, taking turns for ``--rounds`` rounds (medians).
Memory: `python -m export.batch` on ``--big-rows`` rows of Parquet and of CSV,
each in a new process that reports its own peak RSS (``VmHWM``). With
``--engine ray|spark``: that engine in a process of its own, with one worker
per core, timed apart: the start of its cluster or session, its first job (a
table of 1,000 rows), a second such job (what any job costs: its workers'
start), then the memory run's Parquet file (``--big-rows``); "once started" is
that file's rows beyond 1,000 over its time beyond the second job's, against
the local engine's rows/s of the speed run. Markdown on
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
from benchmarks.inputs import REPO, load_texts, or_generated

__all__ = ["ENGINE_TARGETS", "TARGETS", "main", "run"]

#: (name, figure, goal, at least?) of the report's pass/fail lines.
TARGETS = (
    ("local engine rows/s vs predict_proba in memory", "speedup", 0.9, True),
    ("peak RSS, Parquet input (MiB)", "parquet_mib", 300, False),
    ("peak RSS, CSV input (MiB)", "csv_mib", 300, False),
)
#: Rows/s of each engine once started, at least this fraction of the local engine's.
ENGINE_TARGETS = {"ray": 0.6, "spark": 0.5}

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


def _child_env() -> dict[str, str]:
    """This environment, with this checkout first on the children's Python path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


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
    texts, origin = or_generated(*load_texts(data_dir), classifier.encoder.vocabulary)
    repeated = (texts * (rows // len(texts) + 1))[:rows]
    return repeated, origin


def _peak_rss_mib(model: Path, source: Path, output: Path) -> tuple[float, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model), str(source), "-o", str(output), "--overwrite"],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
        env=_child_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"export.batch failed on {source.name}: {done.stderr.strip()[-500:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - started


# A child that starts an engine, scores a small table twice (the engine's first job, then
# any job's fixed cost), then the whole file, and prints the seconds of each step as its
# last stdout line.
_ENGINE_CHILD = """
import json, os, sys, time
from export.tables import read_table
model, source, warm, output, engine, workers = sys.argv[1:]
started = time.perf_counter()
if engine == "ray":
    from export.engines import ray_data as module
    ray = module.import_ray(this_machine_only=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    stop = ray.shutdown
else:
    from export.engines import spark as module
    from pyspark.sql import SparkSession
    session = (SparkSession.builder.master(f"local[{os.cpu_count()}]").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    stop = session.stop
session_s = time.perf_counter() - started
def timed(table, out):
    started = time.perf_counter()
    module.score_files(model, read_table(table), out, workers=int(workers), overwrite=True)
    return time.perf_counter() - started
first_s = timed(warm, output + "-warm")  # the engine's first job: its workers' first start
job_s = timed(warm, output + "-warm")  # what any job costs beyond its rows
run_s = timed(source, output)
stop()
print(json.dumps({"session_s": session_s, "first_s": first_s, "job_s": job_s, "run_s": run_s}))
"""


def _engine_times(model: Path, source: Path, warm: Path, output: Path, engine: str) -> dict:
    """Seconds to start ``engine``, to score the small ``warm`` table, then the whole ``source``."""
    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_CHILD, str(model), str(source), str(warm), str(output), engine, str(os.cpu_count())],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
        env=_child_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"--engine {engine} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
        big, _ = _texts(big_rows, data_dir, classifier)
        pq.write_table(pa.table({"id": np.arange(len(big)), "text": big}), work / "big.parquet")
        with open(work / "big.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            writer.writerows(enumerate(big))
        del big
        engine_runs = {}
        if engines:
            pq.write_table(pa.table({"id": np.arange(1000), "text": texts[:1000]}), work / "warm.parquet")
        for name in engines:
            say(f"--engine {name}, {big_rows:,} rows")
            engine_runs[name] = _engine_times(model, work / "big.parquet", work / "warm.parquet", work / "scored", name)
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
        "engines": {
            # Once started: the rows beyond the small table's, over the time beyond its job's.
            name: {**times, "rows_s": (big_rows - 1000) / (times["run_s"] - times["job_s"]),
                   "vs_local": (big_rows - 1000) / (times["run_s"] - times["job_s"]) / engine_rate,
                   "whole_rows_s": big_rows / times["run_s"]}
            for name, times in engine_runs.items()
        },
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
            f"| `--engine {name}` ({results['machine']['cores']} workers) once started, Parquet -> Parquet "
            f"| {results['big_rows']:,} | {run['rows_s']:,.0f} | |"
            for name, run in results.get("engines", {}).items()
        ),
        "",
        *(
            f"- `--engine {name}`: {run['session_s']:.1f} s to start the {'cluster' if name == 'ray' else 'session'}, "
            f"{run['first_s']:.1f} s for its first job (1,000 rows), {run['job_s']:.1f} s for any job after "
            f"(1,000 rows: its workers' start); the {results['big_rows']:,} rows took {run['run_s']:.1f} s "
            f"({run['whole_rows_s']:,.0f} rows/s), and once started it scores at {run['vs_local']:.2f}x the local engine"
            for name, run in results.get("engines", {}).items()
        ),
        "",
    ]
    targets = [*TARGETS, *((f"--engine {name} once started vs local", name, ENGINE_TARGETS[name], True)
                           for name in results.get("engines", {}))]
    for name, key, goal, at_least in targets:
        value = results["engines"][key]["vs_local"] if key in ENGINE_TARGETS else results[key]
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
        help="also time that engine on the memory run's Parquet file, its start-up apart (repeatable)",
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

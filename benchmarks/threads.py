"""Where threads and call sizes pay off: the measurements behind `export.runtime`'s three constants.

    python -m benchmarks.threads MODEL.onnx [MODEL.onnx ...] [--busy N]

For each model with one integer input of shape (batch, length), three sweeps,
timed in turns (rounds of every case, medians) so a busy neighbour hits all alike:

1. small calls: one single-threaded call against one call on onnxruntime's
   intra-op threads: the work (rows x length) where the threads start to win
   is `export.runtime.PARALLEL_WORK`;
2. big calls: one call on the intra-op threads against the rows cut into
   calls of `MAX_CALL_WORK` run side by side, the calling thread taking its
   share (`OnnxModel._run_many`, as `TextClassifier` does): the work per
   core where side by side starts to win is `export.runtime.SPLIT_WORK`;
3. 1024 rows cut into calls of a given work, side by side: the work per call
   past which calls get slower per token is `export.runtime.MAX_CALL_WORK`.

``--busy N`` runs N processes spinning on the CPU meanwhile, to see how each
way holds up when other work shares the cores. Needs numpy and onnxruntime
only; prints markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import numpy as np

__all__ = ["main", "sweep"]


def _median_ms(calls: list, rounds: int, repeats: int) -> list[float]:
    """Median ms of each callable, the callables taking turns for ``rounds`` rounds."""
    times: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()
    for _ in range(rounds):
        for i, call in enumerate(calls):
            time.sleep(0.02)  # let the previous case's spinning threads go idle
            for _ in range(repeats):
                t = time.perf_counter()
                call()
                times[i].append(time.perf_counter() - t)
    return [1e3 * float(np.median(t)) for t in times]


def sweep(path: str, rounds: int = 5) -> str:
    """The three tables for the model at ``path``, as markdown."""
    from export.runtime import MAX_CALL_WORK, OnnxModel

    model = OnnxModel(path)
    cores = model.threads
    spec = model.inputs[0]
    names = [output.name for output in model.outputs]
    fixed = spec.shape[1]
    rng = np.random.default_rng(0)

    def ids(rows: int, length: int) -> np.ndarray:
        return rng.integers(2, 100, (rows, length)).astype(spec.dtype)

    def one_call(x, parallel):
        return lambda: model._run_checked(names, {spec.name: x}, parallel=parallel)

    def side_by_side(x, work_per_call):
        step = max(work_per_call // x.shape[1], 1)
        parts = [x[i : i + step] for i in range(0, len(x), step)]
        return lambda: model._run_many(lambda part: model._run_checked(names, {spec.name: part}), parts)

    lengths = [fixed] if fixed else [8, 20, 40]
    lines = [f"## {path} ({cores} usable cores)", "", "Small calls:", "",
             f"| rows x length | work | 1 thread ms | intra-op {cores} threads ms |", "|---|--:|--:|--:|"]
    for length in lengths:
        for rows in (1, 2, 4, 8, 16, 32):
            x = ids(rows, length)
            a, b = _median_ms([one_call(x, False), one_call(x, True)], rounds, max(1, 4000 // (rows * length)))
            lines.append(f"| {rows} x {length} | {rows * length} | {a:.3f} | {b:.3f} |")
    lines += ["", f"Big calls (side by side: calls of {MAX_CALL_WORK} work):", "",
              f"| rows x length | work per core | intra-op {cores} threads ms | side by side ms |", "|---|--:|--:|--:|"]
    for length in lengths:
        for rows in (32, 64, 128, 256, 512, 1024):
            x = ids(rows, length)
            a, b = _median_ms([one_call(x, True), side_by_side(x, MAX_CALL_WORK)], rounds,
                              max(1, 40000 // (rows * length)))
            lines.append(f"| {rows} x {length} | {rows * length // cores} | {a:.3f} | {b:.3f} |")
    length = fixed or 40
    x = ids(1024, length)
    works = [w * length for w in (8, 16, 32, 64, 128)]
    times = _median_ms([side_by_side(x, w) for w in works], rounds, 2)
    lines += ["", f"1024 rows of {length} tokens in calls of a given work, side by side on {cores} threads:", "",
              "| work a call | ms for 1024 rows |", "|--:|--:|"]
    lines += [f"| {w} | {t:.2f} |" for w, t in zip(works, times)]
    model.close()
    return "\n".join(lines)


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="MODEL.onnx")
    parser.add_argument("--rounds", type=int, default=5, help="turns every case takes (default: 5)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="processes spinning on the CPU during the sweeps (default: 0)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.busy < 0:
        parser.error("--rounds must be >= 1 and --busy >= 0")
    missing = [path for path in args.models if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such file: {missing[0]}")
    from benchmarks.cli import cpu_name

    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        print(f"{cpu_name()}; {args.busy} busy processes; load average {os.getloadavg()[0]:.2f} at the start\n")
        for path in args.models:
            print(sweep(path, args.rounds) + "\n", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        stop.set()
        for process in spinners:
            process.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())

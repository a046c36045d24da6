"""Where threads and call sizes pay off: the measurements behind `export.runtime`'s two constants.

    python -m benchmarks.threads MODEL.onnx [MODEL.onnx ...]

For each model with one int32 input of shape (batch, length), two sweeps,
timed in turns (rounds of every case, medians) so a busy neighbour hits all alike:

1. rows x length tokens as one single-threaded call, against the same rows cut
   into one call per usable core run side by side (as `export.runtime` does),
   and against one call on onnxruntime's intra-op threads: the work where the
   cores start to win is `export.runtime.PARALLEL_WORK`;
2. 1024 rows cut into calls of a given work, run side by side on all cores:
   the work per call past which calls get slower per token is
   `export.runtime.MAX_CALL_WORK`.

Needs numpy and onnxruntime only; prints markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


def _median_ms(calls: list, rounds: int, repeats: int) -> list[float]:
    """Median ms of each callable, the callables taking turns for ``rounds`` rounds."""
    times: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()
    for _ in range(rounds):
        for i, call in enumerate(calls):
            for _ in range(repeats):
                t = time.perf_counter()
                call()
                times[i].append(time.perf_counter() - t)
    return [1e3 * float(np.median(t)) for t in times]


def sweep(path: str, rounds: int = 5) -> str:
    from export.runtime import usable_cores
    from export.session import open_session

    from concurrent.futures import ThreadPoolExecutor

    cores = usable_cores()
    one, many = open_session(path, threads=1), open_session(path, threads=cores)
    pool = ThreadPoolExecutor(cores)

    def side_by_side(ids, rows_per_call):
        calls = [pool.submit(one.run, None, {spec.name: ids[i : i + rows_per_call]})
                 for i in range(0, len(ids), rows_per_call)]
        return [call.result() for call in calls]

    spec = one.get_inputs()[0]
    fixed = spec.shape[1] if isinstance(spec.shape[1], int) else None
    rng = np.random.default_rng(0)
    lines = [f"## {path} ({cores} usable cores)", "", "| rows x length | work | 1 thread ms | "
             f"{cores} calls side by side ms | intra-op {cores} threads ms |", "|---|--:|--:|--:|--:|"]
    for length in [fixed] if fixed else [8, 20, 40]:
        for rows in (2, 4, 8, 16, 32, 64, 128, 256):
            ids = rng.integers(2, 100, (rows, length)).astype(np.int32)
            feed = {spec.name: ids}
            if rows < cores:
                continue
            a, b, c = _median_ms([lambda: one.run(None, feed), lambda: side_by_side(ids, -(-rows // cores)),
                                  lambda: many.run(None, feed)], rounds, max(1, 2000 // (rows * length)))
            lines.append(f"| {rows} x {length} | {rows * length} | {a:.3f} | {b:.3f} | {c:.3f} |")
    length = fixed or 40
    ids = rng.integers(2, 100, (1024, length)).astype(np.int32)
    sizes = [16, 32, 64, 128, 256, 512]
    calls = [lambda s=s: side_by_side(ids, s) for s in sizes]
    times = _median_ms(calls, rounds, 2)
    lines += ["", f"1024 rows of {length} tokens in calls of a given work, side by side on {cores} threads:", "",
              "| rows a call | work a call | ms for 1024 rows |", "|--:|--:|--:|"]
    lines += [f"| {s} | {s * length} | {t:.2f} |" for s, t in zip(sizes, times)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="MODEL.onnx")
    parser.add_argument("--rounds", type=int, default=5, help="turns every case takes (default: 5)")
    args = parser.parse_args(argv)
    import os

    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    for path in args.models:
        print(sweep(path, args.rounds) + "\n", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

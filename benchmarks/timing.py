"""Interleaved timing: paths take turns so that a noisy neighbour hits them all alike."""

from __future__ import annotations

import time

import numpy as np

__all__ = ["Progress", "paired_speedup", "summarize", "time_batch"]


class Progress:
    """Plain-text progress on stderr: ``[3/17] batch 256, round 2/5``."""

    def __init__(self, total: int, stream=None, enabled: bool = True) -> None:
        import sys

        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()

    def step(self, message: str) -> None:
        self.done += 1
        self.say(f"[{self.done}/{self.total}] {message}")

    def say(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"{message}  ({elapsed:.0f}s)", file=self.stream, flush=True)


#: Pause before each path's turn. onnxruntime's intra-op pools (default
#: sessions) and TensorFlow's keep their threads spinning for a while after a
#: call; without a pause the next path paid for them: the runtime on 1024
#: half-length rows ran at 16.6k sentences/s right after a default session
#: against 30.1k alone, and at 38.5k against 45.3k after a 50 ms pause
#: (2026-11-28, load average 5).
SETTLE_S = 0.05


def time_batch(paths: dict, ids, texts, *, budget_s: float, rounds: int, min_calls: int, warmup: int = 2,
               progress: Progress | None = None, label: str = "", settle_s: float = SETTLE_S) -> dict[str, list[list[float]]]:
    """Seconds per call of each path on one batch, one list per round.

    Every path is warmed up, then the paths take turns for ``rounds`` rounds,
    each getting about ``budget_s / rounds`` seconds a round and at least
    ``min_calls`` calls in all, after a pause of ``settle_s`` (`SETTLE_S`).
    """
    for run in paths.values():
        for _ in range(warmup):
            run(ids, texts)
    samples: dict[str, list[list[float]]] = {name: [] for name in paths}
    per_round = budget_s / rounds
    calls_per_round = max(1, -(-min_calls // rounds))
    for r in range(rounds):
        if progress is not None:
            progress.step(f"{label}, round {r + 1}/{rounds}")
        for name, run in paths.items():
            time.sleep(settle_s)
            spent, calls, times = 0.0, 0, []
            samples[name].append(times)
            while calls < calls_per_round or spent < per_round:
                t = time.perf_counter()
                run(ids, texts)
                dt = time.perf_counter() - t
                times.append(dt)
                spent += dt
                calls += 1
    return samples


def paired_speedup(baseline: list[list[float]], path: list[list[float]]) -> float:
    """Median over rounds of (baseline's median / path's median) within the round.

    A ratio taken within one round, seconds apart, survives the load drift
    between rounds that a ratio of overall medians would absorb.
    """
    return float(np.median([np.median(b) / np.median(p) for b, p in zip(baseline, path)]))


def summarize(rounds: list[list[float]], rows: int) -> dict:
    """Median, p99 and throughput of per-call times for batches of ``rows``."""
    s = np.asarray([t for times in rounds for t in times])
    median = float(np.median(s))
    return {
        "calls": int(s.size),
        "median_ms": 1e3 * median,
        "p50_ms": 1e3 * median,
        "p99_ms": 1e3 * float(np.percentile(s, 99)),
        "min_ms": 1e3 * float(s.min()),
        "sentences_per_s": rows / median,
    }

"""Load-test ``python -m export.serve`` on loopback: requests/s and latency under 1 to 64 clients.

    python -m benchmarks.serve_load --data DIR       # the bundled model, real sentences
    python -m benchmarks.serve_load sentiment.onnx --seconds 3

Starts the server in a subprocess on 127.0.0.1 (a free port) with its
defaults, then runs each scenario for a bounded time and request count:
1, 8 and 64 concurrent clients sending one sentence per request, and 8
clients sending 64 sentences per request. Each client is a keep-alive
HTTP/1.1 connection sending KServe v2 JSON requests with a ``text`` input
and asking for ``label`` and ``probability`` (what a production client
wants), back to back; the load generator is a small asyncio loop, so it
costs the shared CPU as little as a client can. The in-process reference
is `export.runtime.TextClassifier.predict_proba` on the same 64-sentence
batches. Scenarios and the reference take turns in rounds; each ratio is
the median of its per-round values.

Goals: 64 clients reach >= 5x the requests/s of 1 client (micro-batching
works), and 8 clients x 64 sentences reach >= 0.5x the in-process
batch-64 sentences/s (HTTP and JSON cost less than half).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.cli import quiet_tensorflow, silenced_stderr

quiet_tensorflow()  # load_texts and the export import TensorFlow

from benchmarks.cli import cpu_name  # noqa: E402
from benchmarks.inputs import REPO, load_texts, or_generated  # noqa: E402

__all__ = ["InProcess", "Scenario", "export_bundled", "load", "machine", "main", "measure", "run_async", "start_server"]

#: (clients, sentences per request)
SCENARIOS = ((1, 1), (8, 1), (64, 1), (8, 64))
GOAL_CONCURRENCY = 5.0
GOAL_HTTP_SHARE = 0.5


@dataclass
class Scenario:
    clients: int
    sentences: int
    requests: int
    seconds: float
    requests_per_s: float
    sentences_per_s: float
    p50_ms: float
    p99_ms: float
    rows_per_call: float
    server_cpu_ms: float
    client_cpu_ms: float


def _request(model: str, texts: list[str]) -> bytes:
    body = json.dumps(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "outputs": [{"name": "label"}, {"name": "probability"}],
        }
    ).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _client(port: int, requests, stop_at: float, budget: list[int], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(next(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                status = head.split(b"\r\n")[0].decode()
                raise RuntimeError(f"the server answered {status}: {body[:200].decode()}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def load(port: int, model: str, texts: list[str], clients: int, sentences: int, seconds: float, max_requests: int):
    """``clients`` keep-alive clients sending ``sentences`` texts a request, for ``seconds`` or ``max_requests``: ``(latencies, seconds)``."""
    bodies = [_request(model, texts[i : i + sentences]) for i in range(0, len(texts) - sentences, max(sentences, 7))]
    requests = itertools.cycle(bodies)
    latencies: list[float] = []
    budget = [max_requests]
    started = time.perf_counter()
    await asyncio.gather(*[_client(port, requests, started + seconds, budget, latencies) for _ in range(clients)])
    return latencies, time.perf_counter() - started


def _batch_totals(port: int, model: str) -> tuple[float, float]:
    """(rows, calls) so far, from the server's batch-size histogram."""
    from urllib.request import urlopen

    totals = {}
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            for part in ("sum", "count"):
                if line.startswith(f'keras_attn_batch_rows_{part}{{model="{model}"}}'):
                    totals[part] = float(line.split()[-1])
    return totals.get("sum", 0.0), totals.get("count", 0.0)


def run_async(coroutine):
    """Run on uvloop when installed (the serve extra has it): the load generator then takes less of the CPU it shares with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: subprocess.Popen, port: int, model: str, texts: list[str], clients: int, sentences: int, *, seconds: float, max_requests: int):
    """One run of a scenario after a short warm-up, bounded by ``seconds`` and ``max_requests``.

    Returns:
        ``(latencies, seconds, rows, calls, server CPU seconds, load
        generator CPU seconds)``: rows and model calls from the server's metrics.
    """
    run_async(load(port, model, texts, clients, sentences, min(0.3, seconds), max_requests))
    rows, calls = _batch_totals(port, model)
    cpu, own = _cpu_seconds(server.pid), time.process_time()
    latencies, elapsed = run_async(load(port, model, texts, clients, sentences, seconds, max_requests))
    cpu, own = _cpu_seconds(server.pid) - cpu, time.process_time() - own
    rows_after, calls_after = _batch_totals(port, model)
    return latencies, elapsed, rows_after - rows, calls_after - calls, cpu, own


def _scenario(clients: int, sentences: int, runs: list[tuple]) -> Scenario:
    """Totals over the runs of one scenario, each as `measure` returns it."""
    latencies = [x for run in runs for x in run[0]]
    elapsed = sum(run[1] for run in runs)
    ms = np.array(latencies) * 1000
    return Scenario(
        clients=clients,
        sentences=sentences,
        requests=len(latencies),
        seconds=elapsed,
        requests_per_s=len(latencies) / elapsed,
        sentences_per_s=len(latencies) * sentences / elapsed,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        rows_per_call=sum(run[2] for run in runs) / max(sum(run[3] for run in runs), 1),
        server_cpu_ms=1000 * sum(run[4] for run in runs) / max(len(latencies), 1),
        client_cpu_ms=1000 * sum(run[5] for run in runs) / max(len(latencies), 1),
    )


class InProcess:
    """`export.runtime.TextClassifier.predict_proba` on 64-sentence batches of ``texts``."""

    def __init__(self, model_path: Path, texts: list[str]) -> None:
        from export.runtime import TextClassifier

        self.classifier = TextClassifier(model_path)
        self.batches = [texts[i : i + 64] for i in range(0, len(texts) - 64, 64)]
        for batch in self.batches[:5]:
            self.classifier.predict_proba(batch)

    def sentences_per_s(self, seconds: float) -> float:
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.classifier.predict_proba(self.batches[calls % len(self.batches)])
            calls += 1
        return calls * 64 / (time.perf_counter() - started)


def start_server(model_path: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    """``python -m export.serve`` on a free loopback port, with ``extra`` options: ``(process, port)``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "export.serve", str(model_path), "--port", "0", "--grpc-port", "0", *extra],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    line = process.stderr.readline()
    if not line.startswith("serving "):
        process.kill()
        raise RuntimeError(f"the server did not start: {line}{process.stderr.read()}")
    return process, int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])


def export_bundled(folder: Path) -> Path:
    """The bundled model exported to ``folder/sentiment.onnx``."""
    import keras_attn
    from export.to_onnx import convert

    path = folder / "sentiment.onnx"
    with silenced_stderr():
        convert(keras_attn.load_pretrained(), path)
    return path


def machine() -> str:
    """The CPU, its usable cores and the load average, for a report's first line."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores usable, load average {load}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", metavar="MODEL.onnx", help="a text model (default: the bundled model, exported)")
    parser.add_argument(
        "--data", metavar="DIR", help="the UCI sentences folder (default: $KERAS_ATTN_DATA; without either, generated sentences)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per scenario and round (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (default: 3)")
    parser.add_argument("--max-requests", type=int, default=20000, help="most requests per scenario (default: 20000)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--server-args", default="", help="extra options for export.serve, e.g. '--max-delay-ms 1'")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda m: None)
    with silenced_stderr():
        texts, source = load_texts(args.data)
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(args.model).resolve() if args.model else export_bundled(Path(folder))
        from export.runtime import TextClassifier

        texts, source = or_generated(texts, source, TextClassifier(model_path).encoder.vocabulary)
        texts = [t for t in texts if t.strip()]
        say(f"sentences: {len(texts)} from {source}")
        reference = InProcess(model_path, texts)
        process, port = start_server(model_path, args.server_args.split())
        model = model_path.stem
        runs = {case: [] for case in SCENARIOS}
        in_process, concurrency, share = [], [], []
        try:
            # Rounds, each with every scenario and the in-process reference
            # (the server idle meanwhile): the ratios come from one round at a
            # time, so load from other processes drifts less between their terms.
            for round_ in range(args.rounds):
                rate = reference.sentences_per_s(args.seconds / 2)
                in_process.append(rate)
                scenarios = {}
                for clients, sentences in SCENARIOS:
                    say(f"round {round_ + 1}/{args.rounds}: {clients} clients x {sentences} sentences ...")
                    run = measure(process, port, model, texts, clients, sentences, seconds=args.seconds, max_requests=args.max_requests)
                    runs[clients, sentences].append(run)
                    scenarios[clients, sentences] = _scenario(clients, sentences, [run])
                concurrency.append(scenarios[64, 1].requests_per_s / scenarios[1, 1].requests_per_s)
                share.append(scenarios[8, 64].sentences_per_s / rate)
        finally:
            process.terminate()
            process.wait(60)
    results = [_scenario(clients, sentences, runs[clients, sentences]) for clients, sentences in SCENARIOS]
    concurrency_ratio, share_ratio = float(np.median(concurrency)), float(np.median(share))
    print(f"serve load, {datetime.date.today().isoformat()}, {machine()}")
    print(f"sentences: {source}; server defaults{' + ' + args.server_args if args.server_args else ''}; "
          f"{args.rounds} rounds of {args.seconds:g} s per scenario\n")
    print("| clients | sentences/request | requests | requests/s | sentences/s | p50 ms | p99 ms | rows per model call | CPU ms/request: server, load generator |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.clients} | {r.sentences} | {r.requests} | {r.requests_per_s:.0f} | {r.sentences_per_s:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rows_per_call:.1f} | {r.server_cpu_ms:.3f}, {r.client_cpu_ms:.3f} |"
        )
    print(f"\nin-process TextClassifier.predict_proba, batch 64: {np.median(in_process):.0f} sentences/s (median of rounds)")
    rounds = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    print(f"64 clients / 1 client requests/s: {concurrency_ratio:.1f}x (rounds: {rounds(concurrency)}; goal >= {GOAL_CONCURRENCY:g}x): "
          f"{'pass' if concurrency_ratio >= GOAL_CONCURRENCY else 'FAIL'}")
    print(f"8 clients x 64 sentences / in-process batch 64: {share_ratio:.2f}x (rounds: {rounds(share)}; goal >= {GOAL_HTTP_SHARE:g}x): "
          f"{'pass' if share_ratio >= GOAL_HTTP_SHARE else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"scenarios": [asdict(r) for r in results], "in_process_batch64_sentences_per_s": in_process,
                        "concurrency_ratios": concurrency, "http_shares": share, "machine": machine()}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.ray_serve``: `export.serve`'s app on Ray Serve beside ``python -m export.serve``.

    python -m benchmarks.ray_serve                 # the bundled model, real sentences (~1 minute)
    python -m benchmarks.ray_serve sentiment.onnx --seconds 3

The same cores, the same load: 1 and 64 keep-alive clients sending one text a
request (`benchmarks.serve_load`'s asyncio load generator, bounded in time and
count), first against ``python -m export.serve --workers 2``, then against
``export.ray_serve.build_app`` with 2 replicas behind Ray Serve's proxy on a
local Ray cluster of this machine (loopback only). What it shows: what Ray's
proxy costs per request, on one machine. Markdown on stdout with the CPU and
load average; progress on stderr on a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.serve_load import export_bundled, load, machine, run_async, start_server
from export.cli import silenced_stderr

__all__ = ["main", "run"]

#: Concurrent clients of each measurement, one text a request.
CLIENTS = (1, 64)


def _measure(port: int, model: str, texts: list[str], seconds: float, max_requests: int) -> dict:
    figures = {}
    for clients in CLIENTS:
        run_async(load(port, model, texts, clients, 1, min(0.5, seconds), max_requests))  # warm up
        latencies, elapsed = run_async(load(port, model, texts, clients, 1, seconds, max_requests))
        figures[clients] = {
            "requests": len(latencies),
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "p99_ms": float(np.percentile(latencies, 99) * 1000),
        }
    return figures


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(model_path: Path, texts: list[str], *, seconds: float, max_requests: int, say=lambda m: None) -> dict:
    """The figures of both servers, as a dict."""
    model = model_path.stem
    say("python -m export.serve --workers 2")
    process, port = start_server(model_path, ["--workers", "2"])
    try:
        ours = _measure(port, model, texts, seconds, max_requests)
    finally:
        process.terminate()
        process.wait(60)
    say("Ray Serve, 2 replicas")
    from export.engines.ray_data import import_ray

    ray = import_ray(this_machine_only=True)
    from ray import serve

    from export.ray_serve import build_app

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": str(model_path), "num_replicas": "2"}), name="benchmark", route_prefix="/")
        on_ray = _measure(port, model, texts, seconds, max_requests)
        serve.shutdown()
    finally:
        ray.shutdown()
    return {"machine": machine(), "export.serve --workers 2": ours, "Ray Serve, 2 replicas": on_ray}


def report(results: dict) -> str:
    lines = [results["machine"], "", "| server | clients | requests/s | p50 | p99 |", "|---|--:|--:|--:|--:|"]
    for server in ("export.serve --workers 2", "Ray Serve, 2 replicas"):
        for clients, f in results[server].items():
            lines.append(f"| {server} | {clients} | {f['requests_per_s']:,.0f} | {f['p50_ms']:.1f} ms | {f['p99_ms']:.1f} ms |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", metavar="MODEL.onnx", help="a text model (default: the bundled model, exported)")
    parser.add_argument("--data", metavar="DIR", help="the UCI sentences folder (default: $KERAS_ATTN_DATA; else generated sentences)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default: 5)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="most requests per measurement (default: 50000)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda m: None)
    from benchmarks.inputs import load_texts, or_generated
    from export.runtime import TextClassifier

    with silenced_stderr():
        texts, source = load_texts(args.data)
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(args.model).resolve() if args.model else export_bundled(Path(folder))
        texts, _ = or_generated(texts, source, TextClassifier(model_path).encoder.vocabulary)
        texts = [t for t in texts if t.strip()]
        results = run(model_path, texts, seconds=args.seconds, max_requests=args.max_requests, say=say)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from export.cli import quiet_tensorflow, run as run_cli

    quiet_tensorflow()
    sys.exit(run_cli(main))

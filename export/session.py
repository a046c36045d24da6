"""The one place that opens onnxruntime sessions, for the runtime, the exporter and the server.

Imports onnxruntime only; never TensorFlow or Keras.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

__all__ = ["open_session"]


def open_session(
    model: str | os.PathLike[str] | bytes,
    *,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An `onnxruntime.InferenceSession` on the CPU, logging errors only.

    Args:
        model: the path of an ``.onnx`` file, or its serialized bytes.
        threads: intra-op threads of each run; ``None`` leaves onnxruntime's
            default (one per physical core).

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: onnxruntime cannot load the model (one line, the reason).
    """
    source = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise FileNotFoundError(f"no such ONNX file: {model}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no C++ warnings before our own lines
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # onnxruntime's pool threads keep spinning long after a run, and the
    # process's other work pays for it: 1024 rows as single-threaded calls
    # side by side took 26.8 ms right after a 64-row run on the pool, 18.8 ms
    # with the spin cut to 0.5 ms. Runs back to back still find the threads
    # awake (64 rows: 1.30 ms against 1.34; stopping the spin at once cost
    # 3-7% there). AMD EPYC, 2 cores, 2026-11-28.
    options.add_session_config_entry("session.intra_op.spin_duration_us", "500")
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        message = " ".join(str(error).split())
        name = "the model" if isinstance(model, bytes) else str(model)
        raise ValueError(f"{name} is not a usable ONNX model: {message[:300]}") from None

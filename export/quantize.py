"""An int8 copy of an ONNX file (dynamic quantisation of MatMul), measured against the fp32 file.

    from export.quantize import quantize
    report = quantize("model.onnx", "model.int8.onnx", feeds={"tokens": ids})

Only MatMul is quantised: quantising every op made the sentiment model 2.8x
slower on onnxruntime's CPU kernels. The report gives sizes, the best of
interleaved timings and the agreement with the fp32 file rather than
assuming a gain.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.files import atomic_file
from export.session import open_session

__all__ = ["QuantizationReport", "quantize"]


@dataclass(frozen=True)
class QuantizationReport:
    """The int8 copy (dynamic quantisation of MatMul) compared with the fp32 file."""

    path: Path
    size_bytes: int
    fp32_size_bytes: int
    fp32_ms: float
    int8_ms: float
    rows: int
    compared_output: str
    max_abs_diff: float
    label_agreement: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms else math.nan


def quantize(onnx_path, output, *, feeds: dict, repeats: int = 15) -> QuantizationReport:
    """Write ``output``, the int8 copy of ``onnx_path``, and compare the two on ``feeds``.

    Args:
        onnx_path: the fp32 ``.onnx`` file.
        output: the int8 file to write (atomically: whole or not at all).
        feeds: input name -> array, for timing and agreement.
        repeats: timed runs of each file (interleaved; the best counts).

    Returns:
        A `QuantizationReport`: agreement is on ``probability`` if the model
        has that output, else its first; labels are the argmax of a
        multi-class output, or a 0.5 threshold.

    Raises:
        ExportError: the quantizer failed; ``output`` is then unchanged.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = Path(output)
    with atomic_file(output) as tmp:
        logging.getLogger("onnxruntime").setLevel(logging.ERROR)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs its advice on the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(onnx_path), str(tmp), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        except Exception as error:
            raise ExportError(f"int8 quantization failed: {' '.join(str(error).split())[:300]}") from error
        finally:
            root.setLevel(level)
        fp32, int8 = open_session(onnx_path), open_session(tmp)
        (fp32_ms, int8_ms), (out32, out8) = _timings([fp32, int8], feeds, repeats)
        names = [o.name for o in fp32.get_outputs()]
        compared = "probability" if "probability" in names else names[0]
        a, b = out32[names.index(compared)], out8[names.index(compared)]
        if a.ndim >= 1 and a.shape[-1] > 1:
            agree = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
        else:
            agree = (a >= 0.5) == (b >= 0.5)
        size = os.path.getsize(tmp)
    return QuantizationReport(
        path=output,
        size_bytes=size,
        fp32_size_bytes=os.path.getsize(onnx_path),
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        rows=len(next(iter(feeds.values()))),
        compared_output=compared,
        max_abs_diff=float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0,
        label_agreement=float(np.mean(agree)) if agree.size else 1.0,
    )


def _timings(sessions, feeds, repeats: int):
    """Best time in ms of each session on ``feeds``, runs interleaved; and each one's outputs."""
    outputs = [session.run(None, feeds) for session in sessions]  # warm-up
    best = [math.inf] * len(sessions)
    for _ in range(repeats):
        for i, session in enumerate(sessions):
            t = time.perf_counter()
            session.run(None, feeds)
            best[i] = min(best[i], time.perf_counter() - t)
    return [1000 * b for b in best], outputs

"""FLOPs per sentence, counted by hand from the layer shapes, and the machine's sgemm rate.

A multiply-add counts as 2 FLOPs. Per sentence (batch dimension dropped):

* Embedding: 0 (a table lookup).
* Conv1D: ``2 * out_len * kernel * in_channels * filters``.
* Dense: ``2 * inputs * units`` (for every leading position).
* ScaledDotAttention, query ``(Tq, d)``, value ``(Tv, dv)``: scores
  ``2 * Tq * Tv * d`` plus weighted sum ``2 * Tq * Tv * dv``; for the
  self-attention of the tutorial model (``Tq = Tv = seq``, ``d = dv``) that is
  ``4 * seq**2 * d``.
* LSTM: per step and direction ``2 * 4 * (in + units) * units``.
* Element-wise work (bias, relu, mask, scaling, softmax, sigmoid, residual
  Add, pooling, ensemble Average) is left out: it is a few percent of the
  above. For the tutorial model (seq 32,
  32-wide embeddings, 100 filters of width 4: 819,200 conv + 409,600
  attention + 6,400 dense = 1,235,200 FLOPs).

The roofline share of a path is ``FLOPs/sentence * sentences/s`` divided by
the rate numpy reaches on a large fp32 matrix product on all cores.
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["count_flops", "matmul_rate"]


def _dims(shape, seq_len) -> list[int]:
    # A dynamic (None) length is the encoder's padded length.
    return [seq_len if d is None else int(d) for d in shape[1:]]


def count_flops(model, seq_len: int) -> dict:
    """FLOPs per sentence of ``model``'s matrix work on rows of ``seq_len`` ids.

    Returns ``{"total", "layers": {name: FLOPs}, "elementwise": [names of
    weightless layers left out: Add, Average, pooling...], "ignored": [names
    of layers with weights that this counter does not know]}``. Towers of an
    ensemble each count; a nested model is counted layer by layer.
    """
    layers: dict[str, int] = {}
    ignored: list[str] = []
    elementwise: list[str] = []
    for layer in model.layers:
        kind = type(layer).__name__
        try:
            if kind in ("InputLayer", "Embedding", "Flatten", "Dropout", "SpatialDropout1D"):
                continue
            if hasattr(layer, "layers") and kind not in ("Bidirectional",):
                inner = count_flops(layer, seq_len)
                layers.update({f"{layer.name}/{k}": v for k, v in inner["layers"].items()})
                ignored += inner["ignored"]
                elementwise += inner["elementwise"]
                continue
            if kind == "Conv1D":
                k, cin, cout = (int(d) for d in layer.kernel.shape)
                out_len = _dims(layer.output.shape, seq_len)[0]
                layers[layer.name] = 2 * out_len * k * cin * cout
            elif kind == "Dense":
                cin, cout = (int(d) for d in layer.kernel.shape)
                lead = math.prod(_dims(layer.output.shape, seq_len)[:-1])
                layers[layer.name] = 2 * lead * cin * cout
            elif kind == "ScaledDotAttention":
                query, value = layer.input[0], layer.input[1]
                tq, d = _dims(query.shape, seq_len)
                tv, dv = _dims(value.shape, seq_len)
                layers[layer.name] = 2 * tq * tv * d + 2 * tq * tv * dv
            elif kind == "Bidirectional":
                inner = layer.forward_layer
                seq, cin = _dims(layer.input.shape if not isinstance(layer.input, list) else layer.input[0].shape, seq_len)
                units = int(inner.units)
                layers[layer.name] = 2 * seq * 2 * 4 * (cin + units) * units
            elif not layer.weights:
                elementwise.append(layer.name)
            else:
                ignored.append(layer.name)
        except Exception:  # noqa: BLE001 - an unknown layout is listed, not fatal
            ignored.append(layer.name)
    return {"total": int(sum(layers.values())), "layers": layers, "elementwise": elementwise, "ignored": ignored}


def matmul_rate(n: int = 1024, repeats: int = 10) -> dict:
    """Best fp32 ``n x n @ n x n`` rate with numpy (all cores), in FLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return {"n": n, "repeats": repeats, "best_s": best, "flops_per_s": 2 * n**3 / best}

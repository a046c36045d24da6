"""The inference paths under test: each is ``ids -> numpy outputs`` for one batch."""

from __future__ import annotations

import numpy as np

__all__ = ["BASELINE", "build_paths"]

#: The path every ratio is taken against: the fastest plain TensorFlow one.
BASELINE = "tf.function"


def build_paths(model, keras_onnx: str, ours_fp32: str, ours_int8: str | None, threads=None) -> dict:
    """``{name: callable(ids, texts)}``; every callable returns the probability as numpy.

    All paths get the same int32 ids (and the texts they were encoded from,
    which only ``runtime text`` reads) and hand back numpy outputs, so
    TensorFlow's tensor conversions are counted as onnxruntime's are.
    """
    import onnxruntime as ort
    import tensorflow as tf

    from export.runtime import SentimentPredictor

    # The model's own length: fixed (Flatten) or None (any length).
    length = model.inputs[0].shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, length], tf.int32)], jit_compile=False)
    def graph(x):
        return model(x, training=False)

    def keras_predict(ids, texts):
        out = model.predict(ids, batch_size=len(ids), verbose=0)
        return out["probability"]

    def eager(ids, texts):
        out = model(ids, training=False)
        out["attention"].numpy()
        return out["probability"].numpy()

    def tf_function(ids, texts):
        out = graph(tf.convert_to_tensor(ids))
        out["attention"].numpy()
        return out["probability"].numpy()

    session = ort.InferenceSession(keras_onnx, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    # Its outputs are named after the graph, not the model: pick the (batch, 1) one.
    which = next(i for i, o in enumerate(session.get_outputs()) if len(o.shape) == 2)

    def keras_onnx_run(ids, texts):
        return session.run(None, {feed: ids})[which]

    fp32 = SentimentPredictor(ours_fp32, threads=threads)
    paths = {
        "keras predict": keras_predict,
        "keras eager": eager,
        BASELINE: tf_function,
        "keras onnx (ort default)": keras_onnx_run,
        "runtime fp32": lambda ids, texts: fp32.run_ids(ids)["probability"],
    }
    if ours_int8:
        int8 = SentimentPredictor(ours_int8, threads=threads)
        paths["runtime int8"] = lambda ids, texts: int8.run_ids(ids)["probability"]
    if threads != 1:
        # Diagnostic, not used by the targets: everything on one core, to show
        # what parallelism buys (or costs when other processes hold the cores).
        single = SentimentPredictor(ours_fp32, threads=1)
        paths["runtime fp32 1 thread"] = lambda ids, texts: single.run_ids(ids)["probability"]
    # Raw text in: the encoder's work is part of the timing.
    paths["runtime fp32 text"] = lambda ids, texts: fp32.predict_proba(texts)
    return paths


def check_agreement(paths: dict, ids: np.ndarray, texts: list[str]) -> dict[str, float]:
    """Max |probability - tf.function's| per path, on one batch (a sanity check)."""
    reference = np.asarray(paths[BASELINE](ids, texts)).reshape(-1)
    return {
        name: float(np.max(np.abs(np.asarray(run(ids, texts)).reshape(-1) - reference)))
        for name, run in paths.items()
    }

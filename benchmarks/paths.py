"""The inference paths under test: each is ``(ids, texts) -> probability`` (numpy) for one batch."""

from __future__ import annotations

import numpy as np

__all__ = ["BASELINE", "KERAS_ONNX", "ORT_DEFAULT", "ORT_DEFAULT_TWIN", "RUNTIME", "build_paths"]

#: The path every ratio is taken against: the fastest plain TensorFlow one.
BASELINE = "tf.function"
#: Keras's own `model.export(format="onnx")` file on a default InferenceSession.
KERAS_ONNX = "keras onnx (ort default)"
#: Our exported file on a default InferenceSession: what the runtime adds over plain onnxruntime.
ORT_DEFAULT = "our file (ort default)"
#: A second default session on our file, timed like the first: their ratio is
#: how far two identical paths drift apart in one run (the noise floor of the
#: comparison with ORT_DEFAULT).
ORT_DEFAULT_TWIN = "our file (ort default, 2nd session)"
#: `export.runtime` with its defaults on our file.
RUNTIME = "runtime fp32"


def build_paths(model, keras_onnx: str, ours_fp32: str, ours_int8: str | None = None, *, threads=None,
                full: bool = True) -> dict:
    """``{name: callable(ids, texts)}``; every callable returns the probability as numpy.

    All paths get the same int32 ids (and the texts they were encoded from,
    which only ``runtime fp32 text`` reads) and hand back numpy outputs, so
    TensorFlow's tensor conversions are counted as onnxruntime's are.
    ``full=False`` keeps the paths the comparison targets need: tf.function,
    the two files on default sessions (ours twice) and the runtime.
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

    def default_session(path):
        """A plain InferenceSession with default options; every output fetched, the probability returned."""
        session = ort.InferenceSession(path, ort.SessionOptions(), providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        # Keras's file names outputs after the graph, not the model: pick the (batch, 1) one.
        which = next(i for i, o in enumerate(session.get_outputs()) if len(o.shape) == 2)
        return lambda ids, texts: session.run(None, {feed: ids})[which]

    fp32 = SentimentPredictor(ours_fp32, threads=threads)
    paths = {}
    if full:
        paths["keras predict"] = keras_predict
        paths["keras eager"] = eager
    paths[BASELINE] = tf_function
    paths[KERAS_ONNX] = default_session(keras_onnx)
    paths[ORT_DEFAULT] = default_session(ours_fp32)
    paths[ORT_DEFAULT_TWIN] = default_session(ours_fp32)
    paths[RUNTIME] = lambda ids, texts: fp32.run_ids(ids)["probability"]
    if not full:
        return paths
    if ours_int8:
        int8 = SentimentPredictor(ours_int8, threads=threads)
        paths["runtime int8"] = lambda ids, texts: int8.run_ids(ids)["probability"]
    if threads != 1:
        # Diagnostic, not used by the targets: everything on one core, to show
        # what the threads buy (or cost when other processes hold the cores).
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

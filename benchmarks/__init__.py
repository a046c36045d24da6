"""Speed benchmarks of the sentiment model: Keras and TensorFlow against onnxruntime.

    python -m benchmarks                 # full run, a few minutes on 2 cores
    python -m benchmarks --quick         # about a minute
    python -m benchmarks --model my.keras --json out.json

One process times, on the same encoded sentences, Keras ``model.predict``,
an eager ``model(x)``, a warmed-up ``tf.function`` (the TensorFlow
baseline every ratio is taken against), Keras's own ONNX export on a default
onnxruntime session, and `export.runtime.SentimentPredictor` on the fp32 and
int8 files written by `export.to_onnx.convert`. Cold starts run in new
processes. A markdown report goes to stdout, progress to stderr and every
number to a JSON file. See `benchmarks.cli` for the options.

Importing this package is cheap: TensorFlow is imported only when a run starts.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    """Run the benchmarks with command-line ``argv``; see ``python -m benchmarks --help``."""
    from benchmarks.cli import main as _main

    return _main(argv)

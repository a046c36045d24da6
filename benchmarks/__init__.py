"""Speed benchmarks of the sentiment model: Keras and TensorFlow against onnxruntime.

    python -m benchmarks                 # full run, a few minutes on 2 cores
    python -m benchmarks --quick         # about a minute
    python -m benchmarks --model my.keras --json out.json
    python -m benchmarks.threads model.onnx   # the sweeps behind export.runtime's constants

One process times, on the same encoded sentences, Keras ``model.predict``,
an eager ``model(x)``, a warmed-up ``tf.function`` (the TensorFlow
baseline every ratio is taken against), Keras's own ONNX export and our file
on default onnxruntime sessions, and `export.runtime` on the fp32 and int8
files written by `export.to_onnx.convert`; then half-length rows, dense rows
and the tutorial's Flatten model. Cold starts run in new processes. A
markdown report goes to stdout and progress to stderr; every number goes to a
JSON file only with ``--json PATH``. See `benchmarks.cli` for the options.

Importing this package is cheap: TensorFlow is imported only when a run starts.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    """Run the benchmarks with command-line ``argv``; see ``python -m benchmarks --help``."""
    from benchmarks.cli import main as _main

    return _main(argv)

"""Command line of the Keras -> ONNX converter: parse, call `export.convert.convert`, print.

    python -m export.to_onnx                    # the bundled pretrained model -> sentiment.onnx
    python -m export.to_onnx model.keras -o model.onnx --quantize
    python -m export.to_onnx my_model.keras --import my_layers   # registers custom classes first

From Python, `convert` (re-exported here) does the work and returns the
report this command prints::

    from export.to_onnx import convert
    print(convert("model.keras", "model.onnx"))

The pieces are public: `export.signature.ModelSignature` (inputs and
outputs, computed up front), `export.convert.convert`,
`export.validate.validate` (also ``python -m export.validate``) and
`export.quantize.quantize`; their errors are the `export.errors` classes,
re-exported here. The model is always loaded with TensorFlow, whatever
``KERAS_BACKEND`` says. TensorFlow, Keras and tf2onnx are imported on first
use, so ``--help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

from export.cli import CliError, run
from export.convert import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    SUPPORTED_OPSETS,
    ExportReport,
    check_writable,
    convert,
)
from export.errors import ExportError, ExtraInputError, ParityError, UnbuiltModelError, UnsupportedLayerError
from export.loading import import_modules, load_keras, quiet_libraries
from export.quantize import QuantizationReport
from export.validate import SAMPLE_TEXTS

__all__ = [
    "ExportError",
    "ExportReport",
    "ExtraInputError",
    "ParityError",
    "QuantizationReport",
    "SAMPLE_TEXTS",
    "UnbuiltModelError",
    "UnsupportedLayerError",
    "convert",
    "load_keras",
    "main",
]


# -- command line -----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.to_onnx",
        description=(
            "Convert a Keras model (.keras, with its text encoder) to a self-contained ONNX file,\n"
            "then check it on onnxruntime against Keras. Without MODEL, converts the bundled\n"
            "pretrained sentiment model (keras_attn/pretrained/sentiment.keras). The file is\n"
            "written atomically: on any failure nothing is left and an existing file is unchanged."
        ),
        epilog=(
            "examples:\n"
            "  python -m export.to_onnx                        # -> ./sentiment.onnx\n"
            "  python -m export.to_onnx my.keras -o my.onnx --quantize\n"
            "  python -m export.to_onnx custom.keras --import my_layers   # my_layers.py registers its classes\n"
            "then: python -m export.predict sentiment.onnx \"what a great film\""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help="the .keras file (default: the bundled pretrained model)")
    parser.add_argument(
        "-o", "--output", metavar="OUTPUT", help="the .onnx file to write (default: <MODEL stem>.onnx in the current folder)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=list(SUPPORTED_OPSETS),
        metavar="N",
        help=f"ONNX opset, {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (default: {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--quantize",
        action="store_true",
        help="also write an int8 copy (dynamic quantization of MatMul) as <OUTPUT stem>.int8.onnx",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-Keras check (not advised)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="X",
        help=f"largest accepted max |diff| per output (default: {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--import",
        dest="modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (from the current folder too), so that the custom classes it registers\n"
        "(a subclassed model, a custom layer) can be loaded; repeatable",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks, library logs and progress even when not on a terminal"
    )
    return parser


def _bundled_model() -> Path:
    try:
        from keras_attn.pretrained import PATH
    except ImportError as error:
        raise CliError(f"no bundled pretrained model in this installation ({error}); pass MODEL") from None
    path = Path(PATH)
    if not path.is_file():
        raise CliError(f"the bundled pretrained model is missing: {path}; pass MODEL")
    return path


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not (args.tolerance >= 0):
        raise CliError(f"--tolerance must be >= 0, got {args.tolerance}")
    source = Path(args.model) if args.model else None
    if source is not None and not source.exists():
        raise CliError(f"no such file: {source}")
    if source is not None and source.is_dir():
        raise CliError(f"{source} is a folder, not a .keras file")
    if source is not None and not zipfile.is_zipfile(source):
        raise CliError(f"{source} is not a Keras model: not a .keras (zip) archive, or a truncated one")
    output = Path(args.output) if args.output else None
    if output is not None:
        check_writable(output)  # fail before the slow imports
    started = time.perf_counter()
    # Progress lines on an interactive terminal (or with --debug) only, so a
    # failure in a script or CI log is exactly one "error:" line.
    chatty = args.debug or sys.stderr.isatty()

    def progress(message: str) -> None:
        if chatty:
            print(f"{message}...", file=sys.stderr, flush=True)

    progress("loading TensorFlow")
    quiet_libraries(debug=args.debug)
    import_modules(args.modules)
    if source is None:
        source = _bundled_model()
    if output is None:
        output = Path(f"{source.stem}.onnx")
        check_writable(output)
    report = convert(
        source,
        output,
        opset=args.opset,
        verify=not args.no_verify,
        quantize=args.quantize,
        tolerance=args.tolerance,
        progress=progress,
    )
    print(report)
    print(f"wall time {time.perf_counter() - started:.2f}s including TensorFlow start-up")
    return 0


def console() -> int:
    """The `keras-attn-export` console script: `main` with one-line errors."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())

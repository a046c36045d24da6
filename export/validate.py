"""Check an ONNX file against the Keras model it came from, on onnxruntime.

    python -m export.validate model.keras model.onnx

or from Python::

    from export.validate import validate
    report = validate(model, "model.onnx", atol=1e-4, batch_sizes=(1, 16), lengths=(4, 12))

The ONNX file must take exactly the model's inputs (no constant left as a
graph input) and give every output within ``atol + rtol * |keras|`` of
Keras at each batch size and, where an axis is variable, at each length:
a graph that only works at the length it was traced at (an ONNX ``Loop``
unrolled wrongly, a shape baked in) fails here. Inputs are the encoded
`SAMPLE_TEXTS` for a model with a text encoder, else random valid inputs
(ids inside the Embedding, padded rows, an all-padding row).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.cli import CliError, one_line, run
from export.errors import ExportError, ExtraInputError, ParityError, UnbuiltModelError, UnsupportedLayerError
from export.session import open_session
from export.signature import ModelSignature

__all__ = [
    "DEFAULT_ATOL",
    "SAMPLE_TEXTS",
    "ExportError",
    "ExtraInputError",
    "ParityError",
    "UnbuiltModelError",
    "UnsupportedLayerError",
    "ValidationReport",
    "main",
    "sample_inputs",
    "validate",
]

DEFAULT_ATOL = 1e-4
DEFAULT_BATCH_SIZES = (1, 16)
DEFAULT_LENGTHS = (4, 12)

#: Verification sentences for models that carry a text encoder: ordinary
#: reviews, unknown words, an empty text (all padding) and one longer than
#: any sequence length (truncated).
SAMPLE_TEXTS = (
    "This movie was great, I loved every minute of it!",
    "A dull, boring film with terrible acting.",
    "not bad at all",
    "The plot was predictable but the cast was wonderful.",
    "worst film ever",
    "",
    "!!! ???",
    "zyxxq glorptastic unknownword",
    " ".join(["a truly wonderful and moving story that never gets old"] * 12),
)


@dataclass
class ValidationReport:
    """How an ONNX file agrees with Keras.

    ``parity`` maps each output to its largest max |onnxruntime - Keras|
    over all runs; ``runs`` lists the (batch size, length) of each run
    (length None: no variable axis).
    """

    path: Path
    parity: dict[str, float]
    atol: float
    rtol: float
    rows: int
    data: str
    runs: list[tuple[int, int | None]] = field(default_factory=list)

    def __str__(self) -> str:
        shapes = ", ".join(f"{b}x{n}" if n is not None else f"{b}" for b, n in self.runs)
        lines = [f"{self.path}: parity with Keras on {self.data} (runs {shapes}), atol {self.atol:g} rtol {self.rtol:g}:"]
        lines += [f"  {name:<12} max |diff| {diff:.3g}" for name, diff in self.parity.items()]
        return "\n".join(lines)


def sample_inputs(signature: ModelSignature, *, rows: int = 16, length: int = 12, seed: int = 0):
    """Validation inputs for a signature: ``(feeds, description)``.

    The encoded `SAMPLE_TEXTS` (repeated to ``rows``) when the signature has
    a text encoder; else random inputs with every variable axis at
    ``length``: keys of the model's StringLookup / IntegerLookup mixed with
    as many unknown ones, ids inside the model's Embedding with padding at
    the end of each row (one row all padding, one full), normal floats,
    random bools.

    Raises:
        ExportError: an input type that cannot be sampled.
    """
    encoder = signature.encoder
    if encoder is not None:
        texts = list(SAMPLE_TEXTS)
        texts = (texts * (rows // len(texts) + 1))[:rows]
        spec = signature.inputs[0]
        return {spec.name: encoder.encode(texts).astype(spec.dtype)}, "encoded sample sentences"
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in signature.inputs:
        dims = [rows] + [length if isinstance(d, str) else d for d in spec.shape[1:]]
        known = signature.keys.get(spec.name)
        if known or spec.dtype == "string":
            # Keys of the model's lookup, and as many it has never seen.
            known = list(known or [])
            if spec.dtype == "string":
                unknown = [f"unknown-{i}" for i in range(max(len(known), 3))]
            else:
                unknown = [int(max(known, default=0)) + 1 + i for i in range(max(len(known), 3))]
            pool = np.array(known + unknown, dtype=object if spec.dtype == "string" else spec.dtype)
            feeds[spec.name] = pool[rng.integers(0, len(pool), size=dims)]
        elif spec.dtype.startswith(("int", "uint")):
            high = signature.id_limits.get(spec.name, 10)
            x = rng.integers(1 if high > 1 else 0, max(high, 1), size=dims)
            if len(dims) == 2:  # padded rows: all padding, full, random lengths
                lengths = rng.integers(0, dims[1] + 1, size=rows)
                lengths[0], lengths[min(1, rows - 1)] = 0, dims[1]
                if rows > 2:
                    lengths[2] = 1
                x[np.arange(dims[1])[None, :] >= lengths[:, None]] = 0
            feeds[spec.name] = x.astype(spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.random(dims) < 0.5
        elif spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        else:
            raise ExportError(f"cannot make validation inputs of type {spec.dtype} for input '{spec.name}'")
    return feeds, "random inputs with padding and all-padding rows"


def validate(
    keras_model,
    onnx_path,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = 0.0,
    batch_sizes=DEFAULT_BATCH_SIZES,
    lengths=None,
    signature: ModelSignature | None = None,
    seed: int = 0,
) -> ValidationReport:
    """Compare ``onnx_path`` on onnxruntime with ``keras_model``, output by output.

    Args:
        keras_model: the Keras model the file was converted from.
        onnx_path: the ``.onnx`` file.
        atol, rtol: an output fails where |onnx - keras| > atol + rtol * |keras|.
        batch_sizes: the batch sizes run.
        lengths: the lengths every variable axis takes in turn (default
            4 and 12; with a text encoder, its ``seq_len`` and half of it).
            Ignored for a model without a variable axis.
        signature: the model's `ModelSignature` (computed if None).
        seed: seed of the random inputs.

    Returns:
        A `ValidationReport`.

    Raises:
        FileNotFoundError: no file at ``onnx_path``.
        ExtraInputError: the file's inputs are not exactly the model's.
        ParityError: an output differs above the tolerance (or in shape).
        ExportError: onnxruntime cannot load or run the file.
    """
    if not (atol >= 0 and rtol >= 0):
        raise ExportError(f"tolerances must be >= 0, got atol {atol}, rtol {rtol}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ExportError(f"batch sizes must be >= 1, got {tuple(batch_sizes)}")
    signature = signature or ModelSignature.from_keras(keras_model)
    try:
        session = open_session(onnx_path)
    except ValueError as error:
        raise ExportError(str(error)) from error
    check_inputs(signature, [i.name for i in session.get_inputs()])

    encoder = signature.encoder
    if not signature.variable_axes():
        lengths = [None]
    elif lengths is None:
        lengths = (encoder.seq_len, max(1, encoder.seq_len // 2)) if encoder is not None else DEFAULT_LENGTHS
    rows = max(batch_sizes)
    parity: dict[str, float] = {}
    runs = []
    description = ""
    output_names = [o.name for o in session.get_outputs()]
    # A failing node is logged by onnxruntime's C++ side at error level before
    # the exception reaches us: keep stderr to our own one line.
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    for length in lengths:
        feeds, description = sample_inputs(signature, rows=rows, length=length or 1, seed=seed)
        if encoder is not None and length is not None:
            feeds = {name: value[:, :length] for name, value in feeds.items()}
        for batch in batch_sizes:
            batch_feeds = {name: value[:batch] for name, value in feeds.items()}
            try:
                got = dict(zip(output_names, session.run(None, batch_feeds, quiet)))
            except Exception as error:  # onnxruntime raises its own types
                raise ExportError(f"onnxruntime cannot run {onnx_path}: {one_line(error)}") from error
            expected = {k: np.asarray(v) for k, v in signature.call(keras_model, batch_feeds).items()}
            missing = sorted(set(expected) - set(got))
            if missing:
                raise ExportError(f"{onnx_path} lacks the model's outputs {', '.join(missing)}")
            where = f"batch {batch}" + (f", length {length}" if length is not None else "")
            bad = {}
            for name in signature.output_names:
                diff = _max_excess(got[name], expected[name], rtol)
                parity[name] = max(parity.get(name, 0.0), diff)
                if not diff <= atol:
                    bad[name] = diff
            if bad:
                details = ", ".join(f"{name} max |diff| {diff:.3g}" for name, diff in bad.items())
                raise ParityError(
                    f"onnxruntime disagrees with Keras above tolerance {atol:g} ({where}): {details}", parity
                )
            runs.append((batch, length))
    return ValidationReport(Path(onnx_path), parity, atol, rtol, rows, description, runs)


def check_inputs(signature: ModelSignature, onnx_inputs: list[str]) -> None:
    """Raise `ExtraInputError` unless ``onnx_inputs`` are the signature's inputs, in order."""
    expected = signature.input_names
    if list(onnx_inputs) == expected:
        return
    extra = [name for name in onnx_inputs if name not in expected]
    if extra:
        raise ExtraInputError(
            f"the ONNX graph takes inputs the Keras model does not have ({', '.join(extra[:4])}"
            f"{', ...' if len(extra) > 4 else ''}): constants left as graph inputs"
        )
    raise ExtraInputError(f"the ONNX graph's inputs {list(onnx_inputs)} are not the model's {expected}")


def _max_excess(got, expected, rtol: float) -> float:
    """max(|got - expected| - rtol * |expected|), NaN where only one side is NaN -> inf."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    same_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    diff = np.abs(a - b) - rtol * np.abs(np.nan_to_num(b))
    diff[same_nan | same_inf] = 0.0
    diff[np.isnan(diff)] = math.inf  # NaN on one side only
    return float(max(diff.max(), 0.0))


# -- command line -----------------------------------------------------------


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.validate",
        description=(
            "Check an ONNX file against its Keras model on onnxruntime: the same inputs, every output\n"
            "within the tolerance at each batch size and, where an axis is variable, each length."
        ),
        epilog="example:\n  python -m export.validate sentiment.keras sentiment.onnx --batch-sizes 1,64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL.keras", help="the Keras model file")
    parser.add_argument("onnx", metavar="MODEL.onnx", help="the ONNX file converted from it")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, metavar="X", help=f"absolute tolerance (default: {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=float, default=0.0, metavar="X", help="relative tolerance (default: 0)")
    parser.add_argument("--batch-sizes", type=_sizes, default=DEFAULT_BATCH_SIZES, metavar="N,N", help="batch sizes run (default: 1,16)")
    parser.add_argument("--lengths", type=_sizes, default=None, metavar="N,N", help="lengths of variable axes (default: 4,12)")
    parser.add_argument(
        "--import", dest="modules", action="append", default=[], metavar="MODULE",
        help="import MODULE first, so that the custom classes it registers can be loaded (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not (args.atol >= 0 and args.rtol >= 0):
        raise CliError(f"--atol and --rtol must be >= 0, got {args.atol}, {args.rtol}")
    if not Path(args.onnx).is_file():
        raise CliError(f"no such file: {args.onnx}")
    from export.loading import import_modules, load_keras, quiet_libraries

    quiet_libraries(debug=args.debug)
    import_modules(args.modules)
    model = load_keras(args.model)
    print(validate(model, args.onnx, atol=args.atol, rtol=args.rtol, batch_sizes=args.batch_sizes, lengths=args.lengths))
    return 0


def console() -> int:
    """The `keras-attn-validate` console script: `main` with one-line errors."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())

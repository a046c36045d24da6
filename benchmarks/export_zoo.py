"""What converts: `export.convert` against Keras's own ``model.export(format="onnx")`` on the zoo.

    python -m benchmarks.export_zoo              # markdown table on stdout (about 3 minutes on 2 cores)
    python -m benchmarks.export_zoo --only mlp tiny_vit --json zoo.json

Every architecture of `benchmarks.zoo` is built (random weights) and exported
both ways. Each file is run on a plain onnxruntime session against the Keras
model on the same inputs (`export.validate.sample_inputs`) at batch sizes 1
and 16 and, where an axis is variable, lengths 4 and 12. A file is "ok" when
it loads, takes exactly the model's inputs and every output is within 1e-4;
otherwise the table says what went wrong. Ours must never fail where Keras's
passes: the last line says whether it did. Conversion times include
validation for ours (Keras's export checks nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

from export.cli import quiet_tensorflow, silenced_stderr

quiet_tensorflow()

TOLERANCE = 1e-4
BATCH_SIZES = (1, 16)
LENGTHS = (4, 12)


def keras_export_status(model, path: Path, signature) -> tuple[str, float]:
    """(status, max |diff|) of Keras's own export of ``model`` at ``path``."""
    import numpy as np
    import onnxruntime as ort

    from export.session import open_session
    from export.validate import sample_inputs

    # Keras's export refuses a model never called ("has never called"); a
    # user's trained model has been.
    signature.call(model, sample_inputs(signature, rows=2)[0])
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), silenced_stderr():
            warnings.simplefilter("ignore")
            model.export(str(path), format="onnx")
    except Exception as error:
        return f"export raised {type(error).__name__}", math.nan
    try:
        session = open_session(path)
    except ValueError:
        return "file does not load", math.nan
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(signature.inputs):
        return f"{len(names) - len(signature.inputs):+d} graph inputs", math.nan
    # Keras names inputs its own way: match by name where it can, else by
    # position; and feeds them the types its file declares (it may want float ids).
    by_name = sorted(names) == sorted(signature.input_names)
    types = {i.name: i.type for i in session.get_inputs()}
    numpy_types = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    worst = 0.0
    lengths = LENGTHS if signature.variable_axes() else (1,)
    for length in lengths:
        feeds, _ = sample_inputs(signature, rows=max(BATCH_SIZES), length=length)
        for batch in BATCH_SIZES:
            ours = {name: value[:batch] for name, value in feeds.items()}
            theirs = dict(ours) if by_name else {n: ours[s] for n, s in zip(names, signature.input_names)}
            theirs = {n: v.astype(numpy_types.get(types[n], v.dtype)) for n, v in theirs.items()}
            try:
                got = session.run(None, theirs, quiet)
            except Exception:
                return "fails at run time", math.nan
            expected = list(signature.call(model, ours).values())
            if len(got) != len(expected):
                return "other outputs", math.nan
            outputs = [o.name for o in session.get_outputs()]
            if sorted(outputs) == sorted(signature.output_names):
                got = [got[outputs.index(name)] for name in signature.output_names]
            for a, b in zip(got, expected):
                b = np.asarray(b)
                if a.shape != b.shape:
                    return "wrong shapes", math.nan
                worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
    return ("ok" if worst <= TOLERANCE else "wrong numbers"), worst


def _ours_status(model, path: Path) -> tuple[str, float, object]:
    from export.convert import convert
    from export.errors import ExportError, ParityError, UnsupportedLayerError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = convert(model, path)
    except UnsupportedLayerError as error:
        layer = str(error).split("(", 1)[1].split(")", 1)[0]
        return f"refused ({layer})", math.nan, None
    except ParityError as error:
        return "wrong numbers (refused)", max(error.parity.values(), default=math.nan), None
    except ExportError as error:
        return f"error: {str(error)[:60]}", math.nan, None
    return "ok", max(report.parity.values()), report


def run(names=None) -> list[dict]:
    """Export every architecture (or those named) both ways; one result dict each."""
    from benchmarks.zoo import ARCHITECTURES
    from export.signature import ModelSignature

    rows = []
    with tempfile.TemporaryDirectory(prefix="keras-attn-zoo-") as folder:
        for architecture in ARCHITECTURES:
            if names and architecture.name not in names:
                continue
            if sys.stderr.isatty():
                print(f"{architecture.name}...", file=sys.stderr, flush=True)
            model = architecture.build()
            # Keras's export first, so nothing ours does to the model
            # (calling it, tracing it) changes what Keras's export gets.
            t = time.perf_counter()
            try:
                signature = ModelSignature.from_keras(model)
                keras_status, keras_diff = keras_export_status(model, Path(folder) / f"{architecture.name}.keras.onnx", signature)
            except Exception as error:
                keras_status, keras_diff = f"not comparable ({type(error).__name__})", math.nan
            keras_s = time.perf_counter() - t
            t = time.perf_counter()
            ours, ours_diff, _ = _ours_status(model, Path(folder) / f"{architecture.name}.onnx")
            ours_s = time.perf_counter() - t
            rows.append({
                "name": architecture.name, "kind": architecture.kind,
                "ours": ours, "ours_max_diff": ours_diff, "ours_s": ours_s,
                "keras": keras_status, "keras_max_diff": keras_diff, "keras_s": keras_s,
            })
    return rows


def _diff(status: str, value: float) -> str:
    return status if math.isnan(value) else f"{status}, {value:.1g}"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | kind | `export.convert` (max diff) | Keras `model.export` (max diff) | time ours / Keras |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['kind']} | {_diff(r['ours'], r['ours_max_diff'])} | "
            f"{_diff(r['keras'], r['keras_max_diff'])} | {r['ours_s']:.1f} s / {r['keras_s']:.1f} s |"
        )
    ours_ok = sum(r["ours"] == "ok" for r in rows)
    keras_ok = sum(r["keras"] == "ok" for r in rows)
    worse = [r["name"] for r in rows if r["keras"] == "ok" and r["ours"] != "ok"]
    lines.append("")
    lines.append(f"{len(rows)} models: ours ok on {ours_ok}, Keras's export ok on {keras_ok}; "
                 f"ours fails where Keras's passes: {', '.join(worse) or 'none'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export_zoo",
        description="Export the zoo of benchmarks/zoo.py with export.convert and with Keras's model.export; "
        "print a markdown table of what converts with parity.",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these architectures")
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    args = parser.parse_args(argv)
    from benchmarks.zoo import ARCHITECTURES

    unknown = sorted(set(args.only or ()) - {a.name for a in ARCHITECTURES})
    if unknown:
        parser.error(f"no such architecture: {', '.join(unknown)} (known: {', '.join(a.name for a in ARCHITECTURES)})")
    from export.loading import quiet_libraries

    quiet_libraries()
    rows = run(args.only)
    print(table(rows))
    if args.json:
        from export.files import atomic_file

        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(rows, indent=1))
    worse = [r for r in rows if r["keras"] == "ok" and r["ours"] != "ok"]
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())

"""Classify texts with an exported sentiment model: label, probability, most attended words.

    python -m export.predict sentiment.onnx "what a great film" "dull and slow"
    python -m export.predict sentiment.onnx --file reviews.txt --json
    cat reviews.txt | python -m export.predict sentiment.onnx

Runs on onnxruntime alone: TensorFlow and Keras are never imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from export.cli import CliError, run

__all__ = ["main"]

_SHOWN_CHARS = 60


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.predict",
        description=(
            "Classify texts with an ONNX sentiment model written by `python -m export.to_onnx`. "
            "Texts come from the arguments, from --file (one per line), or else from standard "
            "input (one per line). Each gets its label, the probability of the positive label "
            "and the words the model attended to most."
        ),
        epilog='example: python -m export.predict sentiment.onnx "what a great film" --top-k 5',
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the exported model")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    parser.add_argument("--file", "-f", metavar="F", help="read texts from F, one per line ('-' for standard input)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text per line")
    parser.add_argument(
        "--top-k", type=int, default=3, metavar="N", help="how many most-attended words to show (default: 3)"
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="onnxruntime threads per call (default: 1, fastest here even for large batches)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _lines(stream: Iterable[str]) -> list[str]:
    return [line.rstrip("\r\n") for line in stream]


def _read_texts(args) -> list[str]:
    if args.texts and args.file:
        raise CliError("give texts as arguments or with --file, not both")
    if args.texts:
        return list(args.texts)
    if args.file and args.file != "-":
        try:
            with open(args.file, encoding="utf-8", errors="replace", newline="") as handle:
                return _lines(handle)
        except OSError as error:
            raise CliError(f"cannot read {args.file}: {error.strerror or error}") from None
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")
    return _lines(sys.stdin)


def _shown(text: str) -> str:
    """``text`` on one short line, control characters escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def main(argv=None) -> int:
    # Intermixed: `MODEL --json TEXT` and `MODEL TEXT --json` both work.
    args = _parser().parse_intermixed_args(argv)
    if args.top_k < 0:
        raise CliError(f"--top-k must be >= 0, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    from export.runtime import SentimentPredictor

    predictor = SentimentPredictor(args.model, threads=args.threads)
    texts = _read_texts(args)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    out = sys.stdout
    for prediction in predictor.predict(texts):
        top = prediction.top(args.top_k)
        if args.json:
            record = prediction.to_dict()
            record["top"] = [[word, weight] for word, weight in top]
            out.write(json.dumps(record) + "\n")
        else:
            words = " ".join(f"{word}({weight:.2f})" for word, weight in top) or "-"
            out.write(f"{prediction.label:<8} {prediction.probability:.3f}  {words}  | {_shown(prediction.text)}\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

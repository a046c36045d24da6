"""Classify texts with an exported text model: label, probability, most attended words.

    python -m export.predict sentiment.onnx "what a great film" "dull and slow"
    python -m export.predict sentiment.onnx --file reviews.txt --json > labels.jsonl
    cat reviews.txt | python -m export.predict sentiment.onnx

Streams: texts are read, classified and written in chunks, one output line per
input line and in order, so memory stays flat however long the input and the
first answers come out before the input ends. Runs on onnxruntime alone:
TensorFlow and Keras are never imported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import sys
import time
from collections.abc import Iterable, Iterator

from export.cli import CliError, run

__all__ = ["main"]

#: Most texts classified per model call: large enough that the batching and
#: the threads pay off, small enough that memory stays flat (the attention of
#: 1024 texts of 40 words is 6.5 MB).
CHUNK_LINES = 1024

_READ_BYTES = 1 << 16
_SHOWN_CHARS = 60
#: Exit status when nothing was given to classify (argparse's for usage errors).
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.predict",
        description=(
            "Classify texts with an ONNX text model written by `python -m export.to_onnx` (any number of "
            "labels). Texts come from the arguments, from --file (one per line), or from standard input "
            "(one per line). Each gets one output line, in order: its label, that label's probability and the "
            "words the model attended to most; with --json, one object with every label's score."
        ),
        epilog='example: python -m export.predict sentiment.onnx "what a great film" --top-k 5',
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the exported model")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    parser.add_argument("--file", "-f", metavar="F", help="read texts from F, one per line ('-' for standard input)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text per line "
                        "(text, label, probability, scores, attention, truncated, top)")
    parser.add_argument(
        "--top-k", type=int, default=3, metavar="N", help="how many most-attended words to show (default: 3)"
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="most threads per model call (default: the cores this process may use)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


# -- reading: chunks of lines, as soon as they arrive --------------------------------


def _decode(line: bytes) -> str:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.decode("utf-8", errors="replace")


def _waiting(fd: int) -> bool:
    """True when reading ``fd`` now would block (a pipe or terminal with nothing sent yet)."""
    try:
        return not select.select([fd], [], [], 0)[0]
    except (OSError, ValueError):
        return False


def _fd_chunks(fd: int, size: int) -> Iterator[list[str]]:
    """Lines read from file descriptor ``fd``, in lists of at most ``size``.

    A chunk is handed on when it is full, or as soon as the input has nothing
    more ready: a slow writer's lines are answered as they come.
    """
    pending: list[str] = []
    tail = b""
    while True:
        while len(pending) >= size:
            yield pending[:size]
            del pending[:size]
        if pending and _waiting(fd):
            yield pending
            pending = []
        data = os.read(fd, _READ_BYTES)
        if not data:
            break
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        pending.extend(map(_decode, lines))
    if tail:
        pending.append(_decode(tail))
    for start in range(0, len(pending), size):
        yield pending[start : start + size]


def _text_chunks(stream: Iterable[str], size: int) -> Iterator[list[str]]:
    """Texts in lists of at most ``size``."""
    chunk: list[str] = []
    for text in stream:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _stdin_chunks(size: int) -> Iterator[list[str]]:
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        # A text stream without a file descriptor (e.g. `io.StringIO`).
        yield from _text_chunks((line.rstrip("\r\n") for line in sys.stdin), size)
        return
    yield from _fd_chunks(fd, size)


def _file_chunks(path: str, size: int) -> Iterator[list[str]]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        yield from _fd_chunks(fd, size)
    finally:
        os.close(fd)


# -- writing ----------------------------------------------------------------------


def _shown(text: str) -> str:
    """``text`` on one short line, control characters escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _line(prediction, top_k: int, as_json: bool, label_width: int) -> str:
    top = prediction.top(top_k)
    if as_json:
        record = prediction.to_dict()
        record["top"] = [[word, weight] for word, weight in top]
        return json.dumps(record) + "\n"
    words = " ".join(f"{word}({weight:.2f})" for word, weight in top) or "-"
    return f"{prediction.label:<{label_width}} {prediction.probability:.3f}  {words}  | {_shown(prediction.text)}\n"


class _Progress:
    """``12,288 lines  40,960/s`` on stderr, redrawn in place; only on a terminal, and only past a short run."""

    #: Seconds between redraws; runs shorter than this show nothing.
    interval = 0.2

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.lines = 0
        self.started = self.shown = time.perf_counter()

    def add(self, lines: int) -> None:
        self.lines += lines
        now = time.perf_counter()
        if self.enabled and now - self.shown >= self.interval:
            self.shown = now
            rate = self.lines / max(now - self.started, 1e-9)
            sys.stderr.write(f"\r{self.lines:,} lines  {rate:,.0f}/s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.shown > self.started:
            sys.stderr.write(f"\r{self.lines:,} lines in {time.perf_counter() - self.started:.1f}s   \n")
            sys.stderr.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv=None) -> int:
    parser = _parser()
    # Intermixed: `MODEL --json TEXT` and `MODEL TEXT --json` both work.
    args = parser.parse_intermixed_args(argv)
    if args.top_k < 0:
        raise CliError(f"--top-k must be >= 0, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    if args.texts and args.file:
        raise CliError("give texts as arguments or with --file, not both")
    if not args.texts and args.file is None and _is_terminal(sys.stdin):
        # Nothing given and nobody piping: say how to use it instead of waiting.
        parser.print_usage(sys.stderr)
        print("give TEXT arguments, --file F, or pipe texts in (one per line)", file=sys.stderr)
        return EXIT_USAGE
    from export.runtime import TextClassifier

    classifier = TextClassifier(args.model, threads=args.threads)
    if args.texts:
        chunks = _text_chunks(args.texts, CHUNK_LINES)
    elif args.file and args.file != "-":
        chunks = _file_chunks(args.file, CHUNK_LINES)
    else:
        chunks = _stdin_chunks(CHUNK_LINES)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    out = sys.stdout
    label_width = max(map(len, classifier.labels))
    progress = _Progress(enabled=_is_terminal(sys.stderr))
    try:
        for texts in chunks:
            out.write("".join(_line(p, args.top_k, args.json, label_width) for p in classifier.predict(texts)))
            out.flush()
            progress.add(len(texts))
    finally:
        progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

"""What both command-line tools share: one-line errors and quiet start-up.

A user error (missing file, unreadable model, bad input) is reported as a
single ``error: ...`` line on standard error with a non-zero exit status; the
traceback is shown only with ``--debug``. Nothing here imports TensorFlow or
Keras.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["CliError", "one_line", "quiet_tensorflow", "run", "silenced_stderr"]

#: Exit status for an error reported on one line.
EXIT_ERROR = 1
#: Exit status after Ctrl-C, as a shell reports it.
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing error whose message is printed as is."""


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """``error``'s message on a single line of at most ``limit`` characters."""
    if isinstance(error, BaseException):
        text = str(error).strip()
        if isinstance(error, (KeyError,)) and text.startswith("'"):
            text = text.strip("'")
        text = text or type(error).__name__
    else:
        text = error
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ log and absl start-up lines; call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's "custom operations are on" notice is logged at INFO by absl.
    os.environ.setdefault("GLOG_minloglevel", "2")


@contextlib.contextmanager
def silenced_stderr(enabled: bool = True):
    """Send file descriptor 2 to /dev/null for the block (C++ libraries ignore sys.stderr).

    TensorFlow 2.21 prints absl/oneDNN notices while it is imported, before
    TF_CPP_MIN_LOG_LEVEL takes effect; only the import is wrapped, so Python
    errors (raised, not printed) are never lost.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; turn any exception into one ``error:`` line unless --debug."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        status = main(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - avoid a second error at exit
        except OSError:
            pass
        return EXIT_ERROR
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 - the whole point is one line
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return int(status or 0)

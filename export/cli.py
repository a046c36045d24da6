"""What both command-line tools share: one-line errors and quiet start-up.

A user error (missing file, unreadable model, bad input) is reported as a
single ``error: ...`` line on standard error with a non-zero exit status; the
traceback is shown only with ``--debug``. Nothing here imports TensorFlow or
Keras.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["TRAIN_EXTRA", "CliError", "import_training", "one_line", "quiet_tensorflow", "run", "silenced_stderr"]

#: Exit status for an error reported on one line.
EXIT_ERROR = 1
#: Exit status after Ctrl-C, as a shell reports it.
EXIT_INTERRUPTED = 130


#: What to install for everything that needs TensorFlow and Keras.
TRAIN_EXTRA = 'pip install "keras-attn[train]"'


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


def quiet_tensorflow() -> bool:
    """Silence TensorFlow's C++ log lines from now on; call before importing it.

    Returns False when the user asked for those lines by setting
    ``TF_CPP_MIN_LOG_LEVEL`` to 0 or 1 (then nothing is changed).
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return False
    # Level 3: TensorFlow logs notices as C++ "errors" too (tf.data's
    # "use_unbounded_threadpool" in every fit, oneDNN's DT_BOOL fallback for
    # LSTM masks); real failures reach Python as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN's "custom operations are on" notice is logged at INFO by absl.
    os.environ.setdefault("GLOG_minloglevel", "2")
    return True


def import_training(name: str = "keras"):
    """Import and return a module of the training stack (keras, tensorflow, tf2onnx) quietly.

    The one place where keras-attn first imports them: TensorFlow's absl and
    oneDNN lines, printed while it is imported whatever the log level, are
    silenced unless `quiet_tensorflow` says the user asked for them.

    Raises:
        ModuleNotFoundError: the module or one it needs is not installed (the
            serving install); the message names the extra to install.
    """
    quiet = quiet_tensorflow()
    try:
        with silenced_stderr(quiet):
            return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"{error.name} is not installed: the layer, training and export need {TRAIN_EXTRA}",
            name=error.name,
        ) from None


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

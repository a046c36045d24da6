"""The Ray engine: score a table on a Ray cluster with Ray Data.

In your own Ray job, add the scores to any Dataset with a text column:

    import ray
    from export.engines.ray_data import add_scores

    reviews = ray.data.read_parquet("s3://lake/reviews/")
    scored = add_scores(reviews, "sentiment.onnx", text_column="body", workers=8)
    scored.write_parquet("s3://lake/reviews_scored/")

The rows are scored by a pool of ``workers`` actors of one CPU each, each
opening the model once (one onnxruntime thread: Ray gives the parallelism),
with `export.engines.scoring` as on one machine, so the numbers are those of
`export.runtime.TextClassifier.predict_proba`. The model file is read once on
the driver and shipped through Ray's object store: the workers need this
package, not the file.

`score_files` is what ``python -m export.batch --engine ray`` runs: the
table's part files read side by side by our own readers (`export.tables`, the
same columns and errors as the local engine; the files must be readable at
the same path on every node), scored, and written by ``write_parquet``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

from export.engines.local import DEFAULT_BATCH_ROWS, Summary, check_run
from export.engines.scoring import check_columns, open_classifier, score_batch
from export.files import atomic_dir
from export.runtime import TextClassifier
from export.tables import Table, TableError, import_pyarrow

__all__ = ["RAY_EXTRA", "add_scores", "import_ray", "score_files"]

#: Largest block the read step makes (Ray's default is 128 MiB): about a batch of short texts.
_BLOCK_BYTES = 1 << 20
#: What to install for this engine.
RAY_EXTRA = 'pip install "keras-attn[ray]"'


def import_ray(*, this_machine_only: bool = False):
    """``ray`` with Ray Data loaded; a missing install names the extra.

    ``this_machine_only``: a cluster started by this process is of this
    machine alone and listens on loopback only (Ray's single-machine mode,
    which it reads when it is first imported).
    """
    if this_machine_only:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - used as ray.data
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"Ray is not installed: --engine ray needs {RAY_EXTRA}") from None
    return ray


class _Scorer:
    """A Ray actor: opens the model once, then scores the batches given to it."""

    def __init__(self, model_ref: list, text_column: str) -> None:
        import ray

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(ray.get(model_ref[0]))
            # One thread: the actor holds one CPU, and Ray runs one actor per CPU.
            self.classifier = TextClassifier(path, threads=1)
        self.text_column = text_column

    def __call__(self, batch):
        check_columns(self.classifier, batch.schema.names)
        return score_batch(self.classifier, batch, self.text_column)[0]


def add_scores(
    dataset,
    model: str | PathLike[str] | TextClassifier,
    text_column: str = "text",
    *,
    workers: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
):
    """``dataset`` (a `ray.data.Dataset`) with the scoring columns added, lazily as Ray Data is.

    Args:
        dataset: the rows; every column is kept.
        model: an ``.onnx`` text model of ours on the driver, or its open `TextClassifier`.
        text_column: the column of the texts (strings; nulls keep null scores).
        workers: actors in the pool, one CPU each; ``None`` for every CPU
            of the cluster. Leave CPUs to the steps before it that need
            one (Ray's ``read_*`` tasks do), or they wait for the pool forever.
        batch_rows: rows per scoring call.

    Raises:
        FileNotFoundError: no such model file.
        ValueError: not a text model of ours (checked here, on the driver).

    Errors in the rows (a missing text column, a column that scoring adds)
    surface when the dataset runs.
    """
    ray = import_ray()
    classifier = open_classifier(model, threads=1)  # a bad model fails here, once, not in every actor
    if workers is None:
        workers = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    # The file goes through the object store by reference: inline, Ray would copy it into
    # every actor's constructor arguments.
    model_ref = [ray.put(classifier.path.read_bytes())]
    return dataset.map_batches(
        _Scorer,
        fn_constructor_kwargs={"model_ref": model_ref, "text_column": text_column},
        batch_format="pyarrow",
        batch_size=batch_rows,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )


def _read_part(parts, table: Table, rows: int, schema) -> Iterator:
    pa = import_pyarrow()
    for part in parts["part"].to_pylist():
        for batch in table.part_batches(Path(part), rows, schema):
            yield pa.Table.from_batches([batch])


def score_files(
    model: str | PathLike[str],
    table: Table,
    output: str | PathLike[str],
    *,
    workers: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    overwrite: bool = False,
    address: str | None = None,
    progress: bool = False,
) -> Summary:
    """Score every row of ``table`` into the Parquet folder ``output`` on a Ray cluster.

    Joins the cluster at ``address`` (or ``RAY_ADDRESS``), the one this
    process is already connected to, or else starts a local one sized to this
    machine and shuts it down at the end.

    Args:
        progress: show Ray Data's progress bars.

    Raises:
        FileExistsError, TableError, ValueError: as `export.engines.local.score_files`.
    """

    ray = import_ray()
    started_at = time.perf_counter()
    output = Path(output)
    classifier, schema = check_run(model, table, output, overwrite)
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS")
        # A cluster of our own (on loopback if import_ray was told so) says nothing unless it fails.
        options = {"address": address} if address else {"num_cpus": os.cpu_count(), "include_dashboard": False}
        ray.init(**options, logging_level=logging.ERROR, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.print_on_execution_start = False
        # Ray merges a task's output into blocks of up to 128 MiB, and gives a block to one
        # actor: a million short texts would be one block, scored by one actor of the pool.
        context.target_max_block_size = _BLOCK_BYTES
        if not progress:
            # Ray Data's notes on its plan and resources, and the stack traces it logs before
            # it raises: the failure reaches the user as one line.
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        parts = ray.data.from_items(
            [{"part": str(part)} for part in table.parts], override_num_blocks=len(table.parts)
        )
        rows = parts.map_batches(
            _read_part, fn_kwargs={"table": table, "rows": batch_rows, "schema": schema},
            batch_format="pyarrow", batch_size=1,
            # No CPU of its own: with one (Ray's default) it would be fused into the scoring
            # actors, and a table of one file would be scored by one actor; and the actors may
            # hold every CPU.
            num_cpus=0,
        )
        scored = add_scores(rows, classifier, table.text_column, workers=workers, batch_rows=batch_rows)
        with atomic_dir(output) as staging:
            try:
                with warnings.catch_warnings():  # its advice on the pool's size for a small table
                    warnings.simplefilter("ignore", UserWarning)
                    scored.write_parquet(str(staging))
            except Exception as error:  # Ray wraps what a task raised; the cause is the user's error
                raise _cause(error) from None
            summary = Summary.of_output(staging, time.perf_counter() - started_at)
    finally:
        if started:
            ray.shutdown()
    return summary


def _cause(error: BaseException) -> BaseException:
    """The error a task raised (a `TableError` or `ValueError` of ours) out of Ray's wrappers."""
    seen = error
    while seen is not None:
        if isinstance(seen, (TableError, ValueError)) and type(seen).__module__.split(".")[0] != "ray":
            # Ray appends its retry advice to the message on a line of its own; ours is one line.
            if seen.args and isinstance(seen.args[0], str):
                seen.args = (seen.args[0].split("\n", 1)[0], *seen.args[1:])
            return seen
        with contextlib.suppress(AttributeError):
            if isinstance(seen.cause, BaseException):
                seen = seen.cause
                continue
        seen = seen.__cause__
    return error

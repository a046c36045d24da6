"""The Spark engine: score a table with PySpark.

In your own Spark job, score a text column with an Arrow UDF:

    from pyspark.sql import SparkSession
    from export.engines.spark import scores_udf

    spark = SparkSession.builder.getOrCreate()
    reviews = spark.read.parquet("s3://lake/reviews/")
    scores = scores_udf(spark, "sentiment.onnx")
    scored = reviews.withColumn("scores", scores("body")).select("*", "scores.*").drop("scores")

``scores("body")`` is a column of structs: ``label`` (string), ``probability``
and one ``score_<class>`` (float) per class of the model, the numbers of
`export.runtime.TextClassifier.predict_proba` (`export.engines.scoring`); a
null text gives a null label and scores. The model file is read once on the
driver and broadcast: each Python worker opens it once, on one onnxruntime
thread (Spark runs a worker per core), and keeps it for every batch after.

`score_files` is what ``python -m export.batch --engine spark`` runs: the
table's part files read side by side by our own readers (`export.tables`:
Python's csv rules, which Spark's CSV reader does not follow for quoted line
breaks; the same columns and errors as the local engine; the files must be
readable at the same path on every executor), scored, and written by Spark's
Parquet writer.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from os import PathLike
from pathlib import Path

from export.engines.local import DEFAULT_BATCH_ROWS, Summary, check_run
from export.engines.scoring import open_classifier, output_columns, score_batch
from export.files import atomic_dir
from export.runtime import TextClassifier
from export.tables import Table, TableError, import_pyarrow

__all__ = ["JAVA_PACKAGE", "SPARK_EXTRA", "import_pyspark", "score_files", "scores_udf"]

#: What to install for this engine.
SPARK_EXTRA = 'pip install "keras-attn[spark]"'
#: Spark runs on a JVM; the package that brings one on Debian and Ubuntu.
JAVA_PACKAGE = "openjdk-17-jre-headless"
#: Column the scores struct is held in between scoring and spreading it into columns.
_SCORES = "__keras_attn_scores"

#: The last line of a worker's traceback when it raised one of our errors.
_RAISED = re.compile(r"^(export\.tables\.TableError|ValueError): (.+)$", re.MULTILINE)
#: This Python worker's open models, by the digest of their bytes.
_OPEN: dict[str, TextClassifier] = {}


def import_pyspark():
    """``pyspark``, once it and Java are there; what is missing is named with its install."""
    try:
        import pyspark
        import pyspark.sql  # noqa: F401 - used as pyspark.sql
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"PySpark is not installed: --engine spark needs {SPARK_EXTRA}") from None
    home = os.environ.get("JAVA_HOME")
    if not (home and Path(home, "bin", "java").exists()) and shutil.which("java") is None:
        raise FileNotFoundError(f"Spark needs Java, and there is none here: apt-get install {JAVA_PACKAGE}")
    return pyspark


def _classifier(digest: str, model_bytes) -> TextClassifier:
    """The model, opened on the first call in this Python worker."""
    if digest not in _OPEN:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(model_bytes.value)
            _OPEN[digest] = TextClassifier(path, threads=1)
    return _OPEN[digest]


def scores_udf(spark, model: str | PathLike[str] | TextClassifier):
    """An Arrow UDF scoring a column of texts: ``scores_udf(spark, "m.onnx")("text")``.

    Args:
        spark: the `SparkSession` (the model is broadcast through it).
        model: an ``.onnx`` text model of ours on the driver, or its open `TextClassifier`.

    Returns:
        A function of a column (name or `Column`) giving a struct column of
        ``label``, ``probability`` and ``score_<class>`` per class.

    Raises:
        FileNotFoundError: no such model file.
        ValueError: not a text model of ours (checked here, on the driver).
    """
    from pyspark.sql.functions import arrow_udf
    from pyspark.sql.types import FloatType, StringType, StructField, StructType

    pa = import_pyarrow()
    classifier = open_classifier(model, threads=1)
    labels = classifier.labels
    data = classifier.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    model_bytes = spark.sparkContext.broadcast(data)
    names = output_columns(labels)
    schema = StructType([StructField(names[0], StringType()), *(StructField(n, FloatType()) for n in names[1:])])

    def scores(texts):
        batch = pa.RecordBatch.from_arrays([texts], names=["text"])
        scored, _ = score_batch(_classifier(digest, model_bytes), batch, "text")
        return pa.StructArray.from_arrays(scored.columns[1:], names=names)

    # Arrow in and out, as the scoring step (a pandas UDF would convert twice). Spark reads
    # the UDF's kind from its type hints, which this module's postponed annotations make text.
    scores.__annotations__ = {"texts": pa.Array, "return": pa.Array}
    return arrow_udf(scores, schema)


def _read_parts(batches, table: Table, rows: int, schema):
    for parts in batches:
        for part in parts.column("part").to_pylist():
            yield from table.part_batches(Path(part), rows, schema)


def score_files(
    model: str | PathLike[str],
    table: Table,
    output: str | PathLike[str],
    *,
    workers: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    overwrite: bool = False,
    progress: bool = False,
) -> Summary:
    """Score every row of ``table`` into the Parquet folder ``output`` with Spark.

    The session is ``SparkSession.builder.getOrCreate()``: spark-submit's and
    ``--master`` settings apply, ``local[*]`` otherwise; a session this call
    created is stopped at the end.

    Args:
        workers: partitions scored side by side; ``None`` for Spark's default
            parallelism (every core of the cluster).
        progress: show Spark's progress bars (a session this call starts).

    Raises:
        FileExistsError, TableError, ValueError: as `export.engines.local.score_files`.
    """
    import_pyspark()
    from pyspark.sql import SparkSession
    from pyspark.sql.pandas.types import from_arrow_schema

    started_at = time.perf_counter()
    output = Path(output)
    classifier, schema = check_run(model, table, output, overwrite)
    existing = SparkSession.getActiveSession()
    builder = SparkSession.builder.appName("keras-attn-batch")
    if existing is None and not {"PYSPARK_SUBMIT_ARGS", "PYSPARK_GATEWAY_PORT"} & set(os.environ):
        # Not under spark-submit: a session of this machine's cores, on loopback, without its
        # UI, that logs only errors and shows its stages' progress only if asked to.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        logging = f"-Dlog4j2.configurationFile={Path(__file__).with_name('log4j2.properties').as_uri()}"
        builder = (
            builder.master("local[*]")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", str(progress).lower())
            .config("spark.driver.extraJavaOptions", logging)
        )
    spark = existing or builder.getOrCreate()
    try:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
        parts = spark.createDataFrame([(str(part),) for part in table.parts], "part string")
        parts = parts.repartition(len(table.parts))  # one part file a task
        rows = parts.mapInArrow(
            lambda batches: _read_parts(batches, table, batch_rows, schema), from_arrow_schema(schema),
        )
        # A table of one big file is one partition: spread its rows over the workers.
        rows = rows.repartition(workers or spark.sparkContext.defaultParallelism)
        scored = rows.withColumn(_SCORES, scores_udf(spark, classifier)(table.text_column))
        scored = scored.select(*(scored[name] for name in schema.names), f"{_SCORES}.*")
        with atomic_dir(output) as staging:
            try:
                scored.write.mode("overwrite").parquet(str(staging))
            except Exception as error:  # Spark wraps what a Python worker raised in its traceback's text
                raise _cause(error) from None
            summary = Summary.of_output(staging, time.perf_counter() - started_at)
    finally:
        if existing is None:
            spark.stop()
    return summary


def _cause(error: Exception) -> Exception:
    """The `TableError` or `ValueError` a Python worker raised, out of Spark's text of its traceback."""
    found = _RAISED.findall(str(error))
    if not found:
        return error
    kind, message = found[-1]
    return (TableError if kind.endswith("TableError") else ValueError)(message.strip())

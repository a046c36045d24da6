"""``python -m export.batch``: score a table of texts with an exported text model.

    python -m export.batch sentiment.onnx reviews.csv -o scored/
    python -m export.batch sentiment.onnx lake/reviews/ -o scored/ --text-column body --format parquet
    python -m export.batch sentiment.onnx lake/reviews/ -o scored/ --engine ray --workers 8
    PYSPARK_SUBMIT_ARGS="--master spark://head:7077 pyspark-shell" python -m export.batch sentiment.onnx lake/reviews/ -o scored/ --engine spark

The input is a CSV or TSV file with a header, JSON Lines or Parquet, or a
folder of such part files; the output a folder of Parquet part files that
``pyarrow.parquet.read_table(OUTPUT)`` reads as one table: every input column
as it was, then ``label``, ``probability`` and ``score_<class>`` per class
(`export.engines.scoring`). This module only parses the command line; the
engines' ``score_files`` do the work: `export.engines.local` (this machine,
streaming), `export.engines.ray_data` (a Ray cluster: $RAY_ADDRESS or
--address, else one started for the run) and `export.engines.spark`
(``SparkSession.builder.getOrCreate()``: the master of $PYSPARK_SUBMIT_ARGS, else
``local[*]``).
"""

from __future__ import annotations

import argparse
import os
import sys

from export.cli import CliError, run
from export.tables import FORMATS

__all__ = ["ENGINES", "main"]

#: Where a table can be scored: this machine, a Ray cluster, or Spark.
ENGINES = ("local", "ray", "spark")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.batch",
        description=(
            "Score a table of texts with an exported text model (.onnx from export.to_onnx):\n"
            "every input row once, with its columns, the predicted label, its probability and\n"
            "one score_<class> column per class, written as a folder of Parquet part files."
        ),
        epilog="examples:\n  python -m export.batch sentiment.onnx reviews.csv -o scored/\n"
        "  python -c \"import pyarrow.parquet as pq; print(pq.read_table('scored').to_pandas())\"\n"
        "  RAY_ADDRESS=head:6379 python -m export.batch sentiment.onnx lake/reviews/ -o scored/ --engine ray\n"
        "  python -m export.batch sentiment.onnx lake/reviews/ -o scored/ --engine spark --workers 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="a text model written by export.to_onnx")
    parser.add_argument("input", metavar="INPUT", help="a .csv, .tsv, .jsonl or .parquet file, or a folder of part files")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="the folder of Parquet part files to write")
    parser.add_argument("--text-column", default="text", metavar="NAME", help="the column (JSON key) of the texts (default: text)")
    parser.add_argument("--format", choices=list(FORMATS), help="the input's format (default: from the suffix)")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="where to score (default: local, this machine)")
    parser.add_argument(
        "--workers", type=_positive, default=None, metavar="N",
        help="ray: scoring actors of one CPU each; spark: partitions scored side by side "
        "(default: every CPU of the cluster)",
    )
    parser.add_argument(
        "--address", default=None, metavar="ADDRESS",
        help="ray: the cluster to join (default: $RAY_ADDRESS, else a local cluster started for the run)",
    )
    parser.add_argument("--batch-size", type=_positive, default=None, metavar="N", help="rows per batch (default: 8192)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from pathlib import Path

    from export.engines.local import DEFAULT_BATCH_ROWS, check_output, score_files
    from export.tables import read_table

    if not Path(args.model).is_file():
        raise CliError(f"no such file: {args.model}")
    output = Path(args.output)
    check_output(output, args.overwrite)
    table = read_table(args.input, args.text_column, args.format)
    progress = None
    if sys.stderr.isatty():
        def progress(rows: int) -> None:
            print(f"\rscored {rows:,} rows", end="", file=sys.stderr, flush=True)

    batch_rows = args.batch_size or DEFAULT_BATCH_ROWS
    if args.engine == "local":
        if args.workers is not None or args.address is not None:
            raise CliError("--workers and --address are for --engine ray or spark; the local engine uses every core")
        try:
            summary = score_files(
                args.model, table, output, batch_rows=batch_rows, overwrite=args.overwrite, progress=progress,
            )
        finally:
            if progress is not None:
                print("\r\033[K", end="", file=sys.stderr)
    elif args.engine == "ray":
        from export.engines import ray_data

        ray_data.import_ray(this_machine_only=not (args.address or os.environ.get("RAY_ADDRESS")))
        summary = ray_data.score_files(
            args.model, table, output, workers=args.workers, batch_rows=batch_rows,
            overwrite=args.overwrite, address=args.address, progress=progress is not None,
        )
    else:
        if args.address is not None:
            raise CliError("--address is for --engine ray; Spark takes its master from $PYSPARK_SUBMIT_ARGS (--master)")
        from export.engines import spark

        spark.import_pyspark()
        summary = spark.score_files(
            args.model, table, output, workers=args.workers, batch_rows=batch_rows,
            overwrite=args.overwrite, progress=progress is not None,
        )
    print(summary, file=sys.stderr)
    return 0


def console() -> int:
    """The `keras-attn-batch` console script: `main` with one-line errors."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())

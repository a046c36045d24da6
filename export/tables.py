"""Tables of texts in files: CSV, TSV, JSON Lines or Parquet; one file, or a folder of part files.

    from export.tables import read_table
    table = read_table("reviews.csv", text_column="text")
    for batch in table.batches(rows=8192):   # pyarrow RecordBatches, every column kept
        ...

The CSV and JSON Lines record readers here are the one definition of how a
text file of records is read, for training (`keras_attn.data`) and for
scoring (`export.batch`): Python's `csv` module (excel or excel-tab dialect,
strict quoting, fields of any size), or one JSON object a line, each record
numbered by the line it starts on for error messages. Only the standard
library is needed to read records; pyarrow (the ``batch`` extra) is imported
to build and read batches.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TextIO

__all__ = [
    "BATCH_EXTRA",
    "FORMATS",
    "Table",
    "TableError",
    "column_index",
    "csv_records",
    "format_of",
    "import_pyarrow",
    "jsonl_records",
    "read_table",
]

#: Format -> file suffixes it is recognised by.
FORMATS = {"csv": (".csv",), "tsv": (".tsv", ".tab"), "jsonl": (".jsonl", ".ndjson"), "parquet": (".parquet",)}
#: What to install for Parquet and batch scoring.
BATCH_EXTRA = 'pip install "keras-attn[batch]"'
#: Python's csv module refuses fields over 128 KiB unless told; a text may be longer.
_MAX_FIELD = 2**31 - 1


class TableError(OSError):
    """A table that cannot be read; the message is one line naming the file (and the line)."""


def format_of(path: Path, formats=FORMATS) -> str:
    """The format its suffix says, among ``formats``.

    Raises:
        TableError: an unknown suffix (the message says to pass --format).
    """
    suffix = path.suffix.lower()
    for kind, suffixes in formats.items():
        if suffix in suffixes:
            return kind
    raise TableError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
        f"pass --format {'|'.join(formats)}"
    )


def csv_records(stream: TextIO, path: Path, kind: str = "csv") -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line, fields)`` of each record of a CSV or TSV file, the header row first.

    ``stream`` must be opened with ``newline=""`` (line breaks inside quoted
    fields stay in the text). Blank lines are skipped; header names are
    stripped; ``line`` is where the record starts.

    Raises:
        TableError: a record cannot be parsed, or has another number of
            fields than the header.
    """
    dialect = "excel-tab" if kind == "tsv" else "excel"
    reader = csv.reader(stream, dialect, strict=True)
    limit = csv.field_size_limit()
    csv.field_size_limit(_MAX_FIELD)
    try:
        width, consumed = None, 0
        while True:
            start = consumed + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise TableError(f"{path}:{start}: cannot parse this {kind.upper()} record ({error})") from None
            consumed = reader.line_num
            if not record or record == [""]:
                continue  # a blank line
            if width is None:
                width = len(record)
                record = [name.strip() for name in record]
            elif len(record) != width:
                raise TableError(
                    f"{path}:{start}: {len(record)} fields where the header has {width} "
                    f"(a field with a {'tab' if kind == 'tsv' else 'comma'} or a line break must be quoted)"
                )
            yield start, record
    finally:
        csv.field_size_limit(limit)


def jsonl_records(stream: TextIO, path: Path, *, numbers_as_text: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, object)`` of each non-blank line of a JSON Lines file.

    ``numbers_as_text`` keeps numbers as written (``1.0`` stays "1.0"), as
    labels need.

    Raises:
        TableError: a line is not valid JSON, or not an object.
    """
    options = dict(parse_int=str, parse_float=str, parse_constant=str) if numbers_as_text else {}
    # Lines end at "\n" only: U+2028 and U+0085, which JSON allows unescaped
    # inside strings, are not line breaks here (str.splitlines would cut there).
    number = 0
    for number, line in enumerate(_lines(stream), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, **options)
        except json.JSONDecodeError as error:
            raise TableError(f"{path}:{number}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(record, dict):
            raise TableError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _lines(stream: TextIO) -> Iterator[str]:
    pending = ""
    while chunk := stream.read(1 << 20):
        pending += chunk
        *complete, pending = pending.split("\n")
        yield from complete
    if pending:
        yield pending


def column_index(header: list[str], name: str, path: Path, role: str) -> int:
    """The index of column ``name``; `TableError` naming the columns found otherwise."""
    if name not in header:
        found = ", ".join(repr(column) for column in header)
        raise TableError(f"{path}: no {role} column {name!r}; the columns are {found or 'none'}")
    return header.index(name)


# -- tables of part files ------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """The part files of a table and their format; `batches` reads them in order."""

    path: Path
    parts: tuple[Path, ...]
    format: str
    text_column: str

    def batches(self, rows: int = 8192):
        """Yield ``(part file, pyarrow.RecordBatch)`` of at most ``rows`` rows, every column kept.

        Each part gives at least one batch (an empty one for a part without
        rows), so its columns are known.

        CSV and TSV columns are strings as written; JSON Lines columns take
        the keys of the file's first ``rows`` records, in their order (a key
        absent from a record is null there; a key first seen later is an
        error naming its line); Parquet columns keep their types.

        Raises:
            TableError: a record cannot be parsed, the text column is
                missing or not of strings, or a part's columns differ from
                the first part's.
        """
        schema = None
        for part in self.parts:
            for batch in self.part_batches(part, rows, schema):
                schema = batch.schema
                yield part, batch

    def part_batches(self, part: Path, rows: int = 8192, schema=None):
        """Yield the pyarrow RecordBatches of one of `parts`, as `batches` does.

        Engines that read parts side by side call it, each with the first
        part's ``schema``.

        Raises:
            TableError: as `batches`; also a batch whose columns are not ``schema``'s.
        """
        for batch in _READERS[self.format](part, self.format, self.text_column, rows):
            if schema is not None and not batch.schema.equals(schema):
                raise TableError(
                    f"{part}: its columns ({', '.join(batch.schema.names)}) differ from "
                    f"{self.parts[0]}'s ({', '.join(schema.names)})"
                )
            yield batch


def read_table(path: str | PathLike[str], text_column: str = "text", format: str | None = None) -> Table:  # noqa: A002
    """A table at ``path``: one file, or a folder of part files (as Spark and Ray write them).

    A folder's parts are its files of a known suffix (of ``format`` when
    given), in name order; hidden files and ones starting with ``_`` (Spark's
    ``_SUCCESS``) are skipped. Nothing is read yet beyond the names.

    Raises:
        TableError: no such file or folder, an unknown format, or a folder
            without part files.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise TableError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if path.is_dir():
        parts = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.name.startswith((".", "_"))
            and (p.suffix.lower() in FORMATS[format] if format else any(p.suffix.lower() in s for s in FORMATS.values()))
        )
        if not parts:
            wanted = "/".join(FORMATS[format] if format else [s for v in FORMATS.values() for s in v])
            raise TableError(f"{path}: a folder without part files ({wanted})")
        kinds = {format or format_of(p) for p in parts}
        if len(kinds) > 1:
            raise TableError(f"{path}: its part files mix formats ({', '.join(sorted(kinds))}); pass --format")
        return Table(path, tuple(parts), kinds.pop(), text_column)
    if not path.exists():
        raise TableError(f"{path}: no such file or folder")
    return Table(path, (path,), format or format_of(path), text_column)


def import_pyarrow():
    """pyarrow, with pyarrow.parquet and pyarrow.compute loaded; a missing install names the extra."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401 - submodules used as pyarrow.compute and pyarrow.parquet
        import pyarrow.parquet  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"pyarrow is not installed: reading and writing tables needs {BATCH_EXTRA}") from None
    return pyarrow


def _open_text(part: Path) -> TextIO:
    try:
        # utf-8-sig: a byte order mark is not part of the first column's name.
        return open(part, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by the caller
    except IsADirectoryError:
        raise TableError(f"{part}: is a folder, not a file") from None
    except OSError as error:
        raise TableError(f"{part}: cannot read it ({error.strerror or error})") from None


def _decoded(records, part: Path):
    try:
        yield from records
    except UnicodeDecodeError as error:
        raise TableError(f"{part}: not valid UTF-8 ({error.reason})") from None


def _csv_batches(part: Path, kind: str, text_column: str, rows: int):
    pa = import_pyarrow()
    with _open_text(part) as stream:
        records = _decoded(csv_records(stream, part, kind), part)
        first = next(records, None)
        if first is None:
            raise TableError(f"{part}: empty file; expected a header row naming the columns")
        header = first[1]
        column_index(header, text_column, part, "text")
        if len(set(header)) != len(header):
            raise TableError(f"{part}: the header names a column twice ({', '.join(map(repr, header))})")
        schema = pa.schema([(name, pa.string()) for name in header])
        chunk, sent = [], False
        for _, record in records:
            chunk.append(record)
            if len(chunk) == rows:
                yield _string_batch(pa, chunk, schema)
                chunk, sent = [], True
        if chunk or not sent:  # a header alone is an empty table, not none
            yield _string_batch(pa, chunk, schema)


def _string_batch(pa, records: list[list[str]], schema):
    columns = zip(*records) if records else [()] * len(schema)
    return pa.RecordBatch.from_arrays([pa.array(column, pa.string()) for column in columns], schema=schema)


def _jsonl_batches(part: Path, kind: str, text_column: str, rows: int):
    pa = import_pyarrow()
    with _open_text(part) as stream:
        records = _decoded(jsonl_records(stream, part), part)
        schema, chunk, lines = None, [], []
        for line, record in records:
            chunk.append(record)
            lines.append(line)
            if len(chunk) == rows:
                schema = yield from _json_batch(pa, chunk, lines, schema, part, text_column)
                chunk, lines = [], []
        if chunk or schema is None:
            yield from _json_batch(pa, chunk, lines, schema, part, text_column)


def _json_batch(pa, chunk, lines, schema, part, text_column):
    if schema is None:
        keys = list(dict.fromkeys(key for record in chunk for key in record))
        if text_column not in keys:
            found = ", ".join(repr(key) for key in keys)
            raise TableError(f"{part}: no text key {text_column!r}; the keys are {found or 'none'}")
        schema = pa.schema([(key, pa.string() if key == text_column else _json_type(pa, chunk, key, part)) for key in keys])
    else:
        for record, line in zip(chunk, lines):
            unknown = [key for key in record if key not in schema.names]
            if unknown:
                raise TableError(f"{part}:{line}: key {unknown[0]!r} is not among the keys of the first records")
    for record, line in zip(chunk, lines):
        text = record.get(text_column)
        if text is not None and not isinstance(text, str):
            raise TableError(f"{part}:{line}: the text {text_column!r} is a JSON {type(text).__name__}, not a string")
    try:
        yield pa.RecordBatch.from_pylist(chunk, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TableError(f"{part}:{lines[0]}-{lines[-1]}: values of another type than in the first records ({error})") from None
    return schema


def _json_type(pa, records: list[dict], key: str, part: Path):
    """The Arrow type of ``key``'s values (a key that is always null gets strings, not Arrow's null type)."""
    try:
        kind = pa.array([record.get(key) for record in records]).type
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TableError(f"{part}: the values of key {key!r} mix types ({error})") from None
    return pa.string() if kind == pa.null() else kind


def _parquet_batches(part: Path, kind: str, text_column: str, rows: int):
    pa = import_pyarrow()
    try:
        # Read column chunks through a 1 MiB buffer instead of whole: a file of one big
        # row group (pyarrow's default is 1M rows) then streams (1M sentences: 109 MiB, not 143).
        source = pa.parquet.ParquetFile(part, buffer_size=1 << 20, pre_buffer=False)
    except (OSError, pa.ArrowException) as error:
        raise TableError(f"{part}: not a readable Parquet file ({error})") from None
    schema = source.schema_arrow
    column_index(schema.names, text_column, part, "text")
    if not pa.types.is_string(schema.field(text_column).type) and not pa.types.is_large_string(schema.field(text_column).type):
        raise TableError(f"{part}: the text column {text_column!r} holds {schema.field(text_column).type}, not strings")
    sent = False
    for batch in source.iter_batches(batch_size=rows):
        sent = True
        yield batch
    if not sent:
        yield pa.RecordBatch.from_pylist([], schema=schema)


_READERS = {"csv": _csv_batches, "tsv": _csv_batches, "jsonl": _jsonl_batches, "parquet": _parquet_batches}

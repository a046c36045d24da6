"""The scoring step every engine shares: a pyarrow batch of texts in, the batch with its scores out.

    from export.engines.scoring import score_batch
    scored = score_batch(classifier, batch, "text")

Columns added after the input's own: ``label`` (string, the class name),
``probability`` (float32, that label's) and one ``score_<class>`` (float32)
per class of the model, in the model's class order, the numbers of
`export.runtime.TextClassifier.predict_proba`. A row whose text is null keeps
its place with nulls there.
"""

from __future__ import annotations

import numpy as np

from export.runtime import TextClassifier
from export.tables import import_pyarrow

__all__ = ["LABEL", "PROBABILITY", "check_columns", "open_classifier", "output_columns", "score_batch"]

LABEL = "label"
PROBABILITY = "probability"


def open_classifier(model, threads: int | None = None) -> TextClassifier:
    """``model`` as a `TextClassifier`: an open one as it is, a path opened (``threads`` as there)."""
    return model if isinstance(model, TextClassifier) else TextClassifier(model, threads=threads)


def output_columns(labels) -> list[str]:
    """The column names scoring adds, in order, for a model of ``labels``."""
    return [LABEL, PROBABILITY, *(f"score_{label}" for label in labels)]


def check_columns(classifier: TextClassifier, names) -> None:
    """Raise `ValueError` if the input already has a column scoring would add."""
    taken = [name for name in output_columns(classifier.labels) if name in names]
    if taken:
        raise ValueError(
            f"the input already has a column {taken[0]!r}, which scoring adds; rename or drop it first"
        )


def score_batch(classifier: TextClassifier, batch, text_column: str):
    """``batch`` (a pyarrow RecordBatch or Table) with the scoring columns appended.

    Returns:
        ``(scored batch of the same kind, rows without text)``.
    """
    pa = import_pyarrow()
    texts = batch.column(text_column)
    present = np.asarray(pa.compute.is_valid(texts))
    missing = int(len(present) - present.sum())
    values = texts.to_pylist() if missing == 0 else texts.filter(pa.array(present)).to_pylist()
    indices, scores = classifier.classify(values)
    scores = scores.astype(np.float32, copy=False)
    chosen = scores[np.arange(len(indices)), indices]
    labels = np.asarray(classifier.labels, dtype=object)[indices]
    columns = [pa.array(_spread(labels, present, missing), pa.string())]
    columns += [pa.array(_spread(v, present, missing), pa.float32()) for v in (chosen, *scores.T)]
    names = [*batch.schema.names, *output_columns(classifier.labels)]
    return type(batch).from_arrays([*batch.columns, *columns], names=names), missing


def _spread(values: np.ndarray, present: np.ndarray, missing: int) -> np.ndarray:
    """``values`` of the rows with text back at their places, None where text is missing (nulls in Arrow)."""
    if missing == 0:
        return values
    out = np.full(len(present), None, dtype=object)
    out[present] = values
    return out

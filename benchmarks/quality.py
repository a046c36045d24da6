"""``python -m benchmarks.quality``: our classifiers against TF-IDF + logistic regression.

Two tasks from the UCI Sentiment Labelled Sentences files: "sentiment"
(negative / positive, the bundled model's task) and "site" (which of
amazon / imdb / yelp a sentence comes from: 3 classes). For each seed both
models get the same stratified split that `python -m keras_attn.train` makes
(test 20%, validation 10% of the rest): ours trains with the recipe (the
Conv1D model, and with ``--model transformer`` the transformer encoder under
the same recipe) and stops early on the validation split; the baseline (word 1-2-gram TF-IDF, logistic
regression) picks its C on the same validation split and fits on the same
training rows. Test accuracy and macro-F1, mean +- std over the seeds, go to
stdout as markdown; progress goes to stderr on a terminal.

Needs scikit-learn (the ``dev`` extra) and the data (``--data-dir`` or
``$KERAS_ATTN_DATA``; never downloaded here).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cli import cpu_name

__all__ = ["MODELS", "TASKS", "main", "site_task", "baseline_predictions"]

TASKS = ("sentiment", "site")
#: Our models: name -> the `keras_attn.train` options that build it (the recipe otherwise).
MODELS = {"ours": {}, "transformer": {"encoder": "transformer"}}
#: Their rows in the report.
NAMES = {
    "ours": "ours (`keras_attn.train` recipe, Conv1D)",
    "transformer": "ours, `--encoder transformer` (2 blocks, 4 heads)",
    "baseline": "TF-IDF 1-2-grams + logistic regression",
}
#: The baseline's inverse regularisation strengths, chosen on validation macro-F1.
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def site_task(sentences):
    """The 3-class task: each UCI sentence labelled with its site."""
    from keras_attn.data import FILES, LabelledTexts

    classes = tuple(FILES)
    index = {name: i for i, name in enumerate(classes)}
    return LabelledTexts(
        sentences.texts,
        np.array([index[source] for source in sentences.sources], dtype=np.int64),
        classes,
        sentences.checksum,
        origin="UCI Sentiment Labelled Sentences, by site",
    )


def baseline_predictions(texts, labels, train, validation, test):
    """TF-IDF (word 1-2-grams) + logistic regression; C chosen on validation macro-F1.

    Returns:
        ``(predicted class indices of the test rows, the chosen C)``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    texts = np.asarray(texts, dtype=object)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform(texts[train])
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, labels[train])
        score = f1_score(labels[validation], model.predict(vectorizer.transform(texts[validation])),
                         average="macro")
        if best is None or score > best[0]:
            best = (score, c, model)
    _, c, model = best
    return model.predict(vectorizer.transform(texts[test])), c


def run(data_dir=None, seeds=range(5), tasks=TASKS, models=("ours",), say=lambda message: None, **options):
    """Per task, per model (of `MODELS`, then the baseline), per seed: test accuracy and macro-F1.

    Returns:
        ``{task: {"ours": [{"accuracy", "macro_f1", ...}, ...], ..., "baseline": [...]}}``.
    """
    from keras_attn.data import find_data_dir, load_sentences
    from keras_attn.train import DEFAULTS, classification_metrics, split_data, train

    # Each run's new model traces its own predict function; TensorFlow warns
    # about "retracing" from the sixth on, which is expected here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    sentences = load_sentences(find_data_dir(data_dir, download=False))
    data = {"sentiment": sentences, "site": site_task(sentences)}
    results = {}
    for task in tasks:
        results[task] = {**{model: [] for model in models}, "baseline": []}
        for seed in seeds:
            train_rows, val_rows, test_rows = split_data(
                data[task], DEFAULTS["test_fraction"], DEFAULTS["validation_fraction"], seed
            )
            progress = []
            for model in models:
                started = time.perf_counter()
                with tempfile.TemporaryDirectory() as folder:
                    metrics = train(data[task], Path(folder) / "run", seed=seed, **MODELS[model], **options)
                results[task][model].append({
                    "seed": seed,
                    "accuracy": metrics["test_accuracy"],
                    "macro_f1": metrics["test_macro_f1"],
                    "best_epoch": metrics["best_epoch"],
                    "seconds": round(time.perf_counter() - started, 1),
                })
                progress.append(f"{model} macro-F1 {metrics['test_macro_f1']:.3f} (epoch {metrics['best_epoch']})")
            labels = np.asarray(data[task].labels)
            predicted, c = baseline_predictions(data[task].texts, labels, train_rows, val_rows, test_rows)
            scores = classification_metrics(labels[test_rows], predicted, data[task].classes)
            results[task]["baseline"].append({
                "seed": seed,
                "accuracy": scores["test_accuracy"],
                "macro_f1": scores["test_macro_f1"],
                "C": c,
            })
            say(f"{task} seed {seed}: {', '.join(progress)}, baseline {scores['test_macro_f1']:.3f} (C={c:g})")
    return results


def report(results) -> str:
    """Markdown tables: mean +- std (and each seed) per task and model, then the goal."""
    lines = []
    for task, by_model in results.items():
        seeds = [row["seed"] for row in by_model["baseline"]]
        lines += [
            f"{task}: test accuracy and macro-F1 over seeds {', '.join(map(str, seeds))}",
            "",
            "| model | accuracy | macro-F1 | macro-F1 by seed |",
            "|---|--:|--:|---|",
        ]
        for model, rows in by_model.items():
            accuracy = np.array([r["accuracy"] for r in rows])
            f1 = np.array([r["macro_f1"] for r in rows])
            lines.append(
                f"| {NAMES[model]} | {accuracy.mean():.3f} +- {accuracy.std(ddof=1) if len(rows) > 1 else 0:.3f} "
                f"| {f1.mean():.3f} +- {f1.std(ddof=1) if len(rows) > 1 else 0:.3f} "
                f"| {' '.join(f'{v:.3f}' for v in f1)} |"
            )
        base = np.array([r["macro_f1"] for r in by_model["baseline"]])
        chosen = " ".join(f"{r['C']:g}" for r in by_model["baseline"] if "C" in r) or "-"
        lines.append("")
        for model in [m for m in by_model if m != "baseline"]:
            ours = np.array([r["macro_f1"] for r in by_model[model]])
            verdict = "PASS" if ours.mean() >= base.mean() else "FAIL"
            # Same split per seed: the paired differences say how sure the order is.
            lines += [
                f"- **{verdict}** {task}: {'our' if model == 'ours' else model} mean macro-F1 {ours.mean():.3f} "
                f"vs baseline {base.mean():.3f} (goal: >=)",
                f"- {model} - baseline by seed: {_paired(ours - base)}",
            ]
        if "ours" in by_model and "transformer" in by_model:
            conv = np.array([r["macro_f1"] for r in by_model["ours"]])
            transformer = np.array([r["macro_f1"] for r in by_model["transformer"]])
            lines.append(f"- transformer - ours (Conv1D) by seed: {_paired(transformer - conv)}")
        lines += [f"- baseline C by seed: {chosen}", ""]
    return "\n".join(lines)


def _paired(difference) -> str:
    return (f"{' '.join(f'{d:+.3f}' for d in difference)} "
            f"({int((difference > 0).sum())} of {len(difference)} seeds ahead)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=(
            "Train our classifier and a TF-IDF + logistic regression baseline on the same "
            "splits of the UCI sentences, for the sentiment task (2 classes) and the site "
            "task (amazon / imdb / yelp), and print mean +- std of test accuracy and macro-F1."
        ),
    )
    parser.add_argument("--data-dir", help="the UCI folder (default: $KERAS_ATTN_DATA, then the Keras cache)")
    parser.add_argument("--seeds", type=int, default=5, metavar="N", help="seeds 0..N-1 (default: 5)")
    parser.add_argument("--task", choices=TASKS, action="append", help="one task (repeatable; default: both)")
    parser.add_argument(
        "--model", choices=list(MODELS), action="append",
        help="our model to train (repeatable; default: ours, the Conv1D recipe)",
    )
    parser.add_argument("--epochs", type=int, help="cap on epochs (default: the recipe's 60, early stopping)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda m: None)
    options = {"epochs": args.epochs} if args.epochs else {}
    started = time.perf_counter()
    results = run(args.data_dir, range(args.seeds), args.task or TASKS, args.model or ("ours",), say=say, **options)
    print(f"Run of {datetime.date.today().isoformat()} on {cpu_name()}, Python {platform.python_version()}, "
          f"{time.perf_counter() - started:.0f} s\n")
    print(report(results))
    return 0


if __name__ == "__main__":
    from export.cli import quiet_tensorflow, run as run_cli

    quiet_tensorflow()
    sys.exit(run_cli(main))

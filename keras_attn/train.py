"""Train a text classifier on your own labelled texts, or the bundled sentiment model.

    python -m keras_attn.train --data tickets.csv --out runs/tickets
    python -m keras_attn.train --out runs/sentiment        # the UCI sentences

A stratified, seeded split holds out a test set and a validation set; training
stops early on the validation loss and keeps the best weights; then the model
(with its text encoder, whose labels are the class names), the test metrics,
the test predictions, the curves, a confusion matrix and attention heatmaps
are written into `--out`, all at once or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from export.cli import CliError, run
from export.files import atomic_dir
from keras_attn.data import FORMATS, DataError, load_sentences, read_labelled_file
from keras_attn.models import (
    ENCODERS,
    TUTORIAL,
    build_text_classifier,
    class_probabilities,
    default_pooling,
    classification_loss,
)
from keras_attn.text import TextEncoder

# The recipe behind the bundled model (see README: "Training"); the model's
# own hyper-parameters default to those of `build_text_classifier`.
DEFAULTS = dict(
    epochs=60,  # a ceiling: early stopping ends the recipe at epochs 23-40
    batch_size=64,
    seed=0,
    num_words=5000,  # every word of the training split (about 4,300)
    seq_len=40,  # cuts 0.8% of the sentences, 32 cuts 2.1%
    learning_rate=0.0003,
    # Adam's decoupled weight decay (AdamW): each step shrinks every weight
    # by learning_rate * weight_decay. Chosen on validation loss among
    # 0.001-10 (README: "Training"); 0 is plain Adam.
    weight_decay=3.0,
    patience=5,
    # The UCI set's split; a user's file gets USER_FILE_SPLITS.
    test_fraction=0.2,
    validation_fraction=0.1,
    # None, or "balanced": each class weighs n / (k * its rows) in the loss.
    class_weight=None,
)
#: The held-out fractions for a user's file (`--data`) unless given.
USER_FILE_SPLITS = dict(test_fraction=0.1, validation_fraction=0.1)
MODEL_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(
        build_text_classifier
    ).parameters.items()
    if name in TUTORIAL or name in ("num_heads", "num_layers")
}
# The tutorial's run: its model, vocabulary, length, learning rate, 10 epochs.
TUTORIAL_RUN = dict(
    TUTORIAL, epochs=10, num_words=1000, seq_len=32, learning_rate=0.001,
    weight_decay=0.0, patience=3,
)
#: What each numeric option accepts: (test, wording). Checked by the CLI
#: before anything is read or written.
RANGES = {
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "num_words": (lambda v: v >= 3, ">= 3 (ids 0 and 1 are padding and unknown)"),
    "seq_len": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "patience": (lambda v: v >= 0, ">= 0"),
    "test_fraction": (lambda v: 0 < v < 1, "between 0 and 1"),
    "validation_fraction": (lambda v: 0 < v < 1, "between 0 and 1"),
    "embedding_dim": (lambda v: v >= 1, ">= 1"),
    "embedding_l2": (lambda v: v >= 0, ">= 0"),
    "units": (lambda v: v >= 2, ">= 2"),
    "kernel_size": (lambda v: v >= 1, ">= 1"),
    "embedding_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "attention_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "pooled_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "num_heads": (lambda v: v >= 1, ">= 1"),
    "num_layers": (lambda v: v >= 1, ">= 1"),
}
#: Flags whose name differs from the option's.
FLAGS = {"test_fraction": "--test-split", "validation_fraction": "--val-split"}


def stratified_split(strata, fraction, seed):
    """Indices `(rest, held_out)`, `fraction` of each stratum held out."""
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    held = []
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        held.extend(members[: round(fraction * len(members))])
    held = np.sort(np.asarray(held, dtype=np.int64))
    rest = np.setdiff1d(np.arange(len(strata)), held)
    return rest, held


def split_data(data, test_fraction, validation_fraction, seed):
    """Train, validation and test indices, stratified by class (and source).

    Raises:
        DataError: a class would have no row in one of the three parts.
    """
    labels = np.asarray(data.labels)
    groups = np.asarray(data.sources if data.sources is not None else [""] * len(labels))
    strata = np.char.add(groups.astype(str), labels.astype(int).astype(str))
    rest, test = stratified_split(strata, test_fraction, seed)
    fit_part, val_part = stratified_split(strata[rest], validation_fraction, seed + 1)
    parts = {"train": rest[fit_part], "validation": rest[val_part], "test": test}
    for index, name in enumerate(data.classes):
        counts = {part: int((labels[rows] == index).sum()) for part, rows in parts.items()}
        if min(counts.values()) == 0:
            total = int((labels == index).sum())
            needed = _rows_needed(test_fraction, validation_fraction)
            raise DataError(
                f"{data.origin}: class {name!r} has {total} row{'s' * (total != 1)}, too few to "
                f"split (train {counts['train']}, validation {counts['validation']}, test "
                f"{counts['test']}); with --test-split {test_fraction:g} and --val-split "
                f"{validation_fraction:g} each class needs at least {needed}"
            )
    return parts["train"], parts["validation"], parts["test"]


def _rows_needed(test_fraction, validation_fraction):
    """The fewest rows of a class that leave one in each part (as `stratified_split` rounds)."""
    n = 3
    while True:
        test = round(test_fraction * n)
        validation = round(validation_fraction * (n - test))
        if test and validation and n - test - validation:
            return n
        n += 1


def classification_metrics(true, predicted, classes):
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix.

    Args:
        true: class indices, shape `(n,)`.
        predicted: class indices, shape `(n,)`.
        classes: the class names, by index.

    Returns:
        A JSON-ready dict. Precision (recall) of a class never predicted
        (absent) is 0, as is its F1, as in scikit-learn.
    """
    true, predicted = np.asarray(true), np.asarray(predicted)
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    hits = np.diag(counts).astype(np.float64)
    per_class = {}
    for i, name in enumerate(classes):
        predicted_as, support = counts[:, i].sum(), counts[i].sum()
        precision = hits[i] / predicted_as if predicted_as else 0.0
        recall = hits[i] / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
    return {
        "test_accuracy": float(hits.sum() / max(len(true), 1)),
        "test_macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(classes),
            "rows": "true class",
            "columns": "predicted class",
            "counts": counts.tolist(),
        },
    }


def cross_entropy(labels, probability, epsilon=1e-7):
    """Mean cross-entropy of class indices under the model's `probability` output."""
    p = class_probabilities(np.asarray(probability, np.float64))
    p = np.clip(p[np.arange(len(labels)), np.asarray(labels, int)], epsilon, 1 - epsilon)
    return float(-np.mean(np.log(p)))


def train(data, out, *, verbose=0, model_name="text_classifier", **options):
    """Trains on `data`, writes the run into the folder `out`.

    Args:
        data: a `keras_attn.data.LabelledTexts` (`read_labelled_file` or
            `load_sentences`).
        out: folder for model.keras, metrics.json, history.json,
            test_predictions.csv and the plots; written in full or not at
            all, replacing what was there.
        verbose: Keras's `fit` verbosity; its progress goes to stderr.
        model_name: the Keras model's name (the bundled one: "sentiment").
        **options: any key of `DEFAULTS` or `MODEL_DEFAULTS`.

    Returns:
        The metrics dict also written to metrics.json.

    Raises:
        TypeError: an unknown option.
        DataError: a class has too few rows to split.
    """
    unknown = set(options) - set(DEFAULTS) - set(MODEL_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    run = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
    hp = {
        **MODEL_DEFAULTS,
        **{k: v for k, v in options.items() if k in MODEL_DEFAULTS},
    }
    if hp["pooling"] is None:  # recorded as built
        hp["pooling"] = default_pooling(hp["encoder"])
    if run["class_weight"] not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {run['class_weight']!r}")
    classes = tuple(data.classes)
    texts = np.asarray(data.texts, dtype=object)
    labels = np.asarray(data.labels)
    train_idx, val_idx, test = split_data(
        data, run["test_fraction"], run["validation_fraction"], run["seed"]
    )

    import keras
    import tensorflow as tf

    from keras_attn.plots import plot_attention, plot_confusion, plot_curves
    from keras_attn.saving import save_model

    keras.utils.set_random_seed(run["seed"])
    tf.config.experimental.enable_op_determinism()
    # Float sums depend on how ops split work between threads: one thread
    # gives the same numbers for a seed on any machine.
    # (TensorFlow refuses once it has run ops; then the process's setting
    # stays, still deterministic within this machine.)
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    # The vocabulary comes from the training texts only.
    encoder = TextEncoder.fit(
        texts[train_idx], num_words=run["num_words"], seq_len=run["seq_len"],
        labels=classes,
    )
    x = encoder.encode(texts)
    # Two classes train one sigmoid unit on 0/1, more a softmax on indices.
    y = labels.astype(np.float32 if len(classes) == 2 else np.int32)
    model = build_text_classifier(
        encoder.vocab_size, len(classes), seq_len=run["seq_len"], name=model_name, **hp
    )
    # Trains through the probability head alone; the weights are shared.
    classifier = keras.Model(model.input, model.output["probability"])
    classifier.compile(
        optimizer=keras.optimizers.Adam(
            run["learning_rate"], weight_decay=run["weight_decay"] or None
        ),
        loss=classification_loss(len(classes)),
        metrics=["accuracy"],
    )
    class_weight = None
    if run["class_weight"] == "balanced":
        counts = np.bincount(labels[train_idx], minlength=len(classes))
        class_weight = {i: len(train_idx) / (len(classes) * c) for i, c in enumerate(counts)}
    started = time.perf_counter()
    # Keras draws its progress bar on stdout; stdout is for results.
    with contextlib.redirect_stdout(sys.stderr):
        fitted = classifier.fit(
            x[train_idx],
            y[train_idx],
            validation_data=(x[val_idx], y[val_idx]),
            epochs=run["epochs"],
            batch_size=run["batch_size"],
            class_weight=class_weight,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=run["patience"],
                    restore_best_weights=True,
                )
            ],
            verbose=verbose,
        )
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}

    output = model.predict(x[test], batch_size=256, verbose=0)["probability"]
    probabilities = class_probabilities(output)
    predicted = np.argmax(probabilities, axis=1)
    scores = classification_metrics(labels[test], predicted, classes)
    metrics = {
        "test_accuracy": scores.pop("test_accuracy"),
        "test_macro_f1": scores.pop("test_macro_f1"),
        "test_loss": cross_entropy(labels[test], output),
        **scores,
    }
    if data.sources is not None:
        sources = np.asarray(data.sources)
        correct = predicted == labels[test]
        metrics["test_accuracy_by_source"] = {
            source: float(correct[sources[test] == source].mean())
            for source in sorted(set(sources[test]))
        }
    metrics.update({
        "best_epoch": int(np.argmin(history["val_loss"])) + 1,
        "epochs_run": len(history["loss"]),
        "train_seconds": round(seconds, 1),
        "sizes": {
            "train": len(train_idx),
            "validation": len(val_idx),
            "test": len(test),
        },
        "parameters": model.count_params(),
        "seed": run["seed"],
        "classes": list(classes),
        "data": {
            "origin": data.origin,
            "rows": len(data),
            "skipped_empty_labels": data.skipped_empty_labels,
            "rows_by_class": {
                name: int((labels == i).sum()) for i, name in enumerate(classes)
            },
        },
        "data_sha256": data.checksum,
        "options": {**run, **hp},
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
    })

    with atomic_dir(out) as staging:
        save_model(model, staging / "model.keras", encoder)
        (staging / "history.json").write_text(json.dumps(history, indent=2))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        _write_predictions(
            staging / "test_predictions.csv", texts[test], labels[test],
            predicted, probabilities, classes,
        )
        for metric in ("loss", "accuracy"):
            plot_curves(history, metric, staging / f"{metric}.png",
                        metrics["best_epoch"])
        plot_confusion(
            np.array(metrics["confusion_matrix"]["counts"]), classes,
            staging / "confusion.png",
        )
        plot_attention(
            _attention_examples(encoder, model, texts[test], labels[test]),
            staging / "attention.png",
        )
    return metrics


def _write_predictions(path, texts, labels, predicted, probabilities, classes):
    """The test split, one row per text: its class, the prediction, P(each class)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "predicted", *(f"P({name})" for name in classes)])
        for text, label, guess, row in zip(texts, labels, predicted, probabilities):
            writer.writerow([text, classes[label], classes[guess], *(f"{p:.6g}" for p in row)])


def _attention_examples(encoder, model, texts, labels, count=3):
    """A few short test texts, one class after another, with their attention."""
    classes = encoder.labels
    count = min(max(count, len(classes)), 4)
    lengths = np.array([len(encoder.tokens(t)) for t in texts])
    order = np.argsort(lengths, kind="stable")
    picked = []
    # Texts of 5-12 words if there are enough, else any with a word.
    for shortest in (5, 1):
        for label in list(range(len(classes))) * count:
            for i in order:
                if (
                    labels[i] == label
                    and i not in picked
                    and shortest <= lengths[i] <= 12
                ):
                    picked.append(i)
                    break
            if len(picked) == count:
                break
        if len(picked) == count:
            break
    if not picked:
        return []
    out = model.predict(encoder.encode(list(texts[picked])), verbose=0)
    probabilities = class_probabilities(out["probability"])
    examples = []
    for row, i in enumerate(picked):
        words = encoder.tokens(texts[i])
        n = len(words)
        guess = int(np.argmax(probabilities[row]))
        text = texts[i] if len(texts[i]) <= 70 else texts[i][:67] + "..."
        title = (
            f"{text}\ntrue: {classes[int(labels[i])]}; predicted: "
            f"{classes[guess]} ({probabilities[row, guess]:.2f})"
        )
        examples.append((title, words, out["attention"][row, :n, :n]))
    return examples


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (exit status 2, as argparse's own)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    """The CLI's options; a bad or out-of-range one exits 2 with one line on stderr."""
    parser = _Parser(
        prog="python -m keras_attn.train",
        description=(
            "Train an attention text classifier on your own labelled texts "
            "(--data: CSV, TSV or JSON Lines, any number of classes), or, "
            "without --data, the bundled sentiment model on UCI Sentiment "
            "Labelled Sentences. Writes model.keras (with its text encoder "
            "and class names), metrics.json, history.json, "
            "test_predictions.csv, loss.png, accuracy.png, confusion.png and "
            "attention.png into --out."
        ),
        epilog="example: python -m keras_attn.train --data tickets.csv "
        "--text-column body --label-column team --out runs/tickets",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", metavar="FILE",
        help="labelled texts: .csv, .tsv or .jsonl (a header row or JSON "
        "keys naming the columns); default: the UCI sentences",
    )
    data.add_argument("--text-column", metavar="NAME", help="column (JSON key) of the texts (default: text)")
    data.add_argument("--label-column", metavar="NAME", help="column (JSON key) of the labels (default: label)")
    data.add_argument("--format", choices=list(FORMATS), help="file format (default: from the suffix)")
    data.add_argument(
        "--labels", metavar="A,B,...",
        help="the classes in the model's output order (default: the sorted "
        "distinct labels); every label must be one of them",
    )
    data.add_argument(
        "--data-dir", metavar="DIR",
        help="without --data: folder with the three UCI *_labelled.txt files "
        "(default: $KERAS_ATTN_DATA, the Keras cache, else a download)",
    )
    parser.add_argument(
        "--out", default="runs/sentiment", metavar="RUN",
        help="output folder (default: runs/sentiment)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it already holds a run",
    )
    parser.add_argument(
        "--preset",
        choices=["recipe", "tutorial"],
        default="recipe",
        help="the bundled model's recipe, or the tutorial's run exactly "
        "(model, 1,000 words, length 32, 10 epochs); the options below "
        "override it",
    )
    for group, defaults in (
        (parser.add_argument_group("training"), DEFAULTS),
        (parser.add_argument_group("model"), MODEL_DEFAULTS),
    ):
        for name, default in defaults.items():
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            text = f"recipe: {default}"
            if name == "pooling":
                text = "recipe: max, mean with the transformer"
            elif name in ("num_heads", "num_layers"):
                text += " (the transformer's)"
            if name in TUTORIAL_RUN:
                text += f", tutorial: {TUTORIAL_RUN[name]}"
            if name in USER_FILE_SPLITS:
                text += f"; with --data: {USER_FILE_SPLITS[name]}"
            if name == "class_weight":
                group.add_argument(
                    flag, choices=["balanced"], dest=name,
                    help="weigh each class by n / (k * its training rows) "
                    "(default: every row weighs 1)",
                )
            elif isinstance(default, bool):
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, dest=name, help=text
                )
            elif name in ("encoder", "pooling"):
                choices = {"encoder": list(ENCODERS),
                           "pooling": ["flatten", "max", "mean"]}[name]
                group.add_argument(flag, choices=choices, dest=name, help=text)
            else:
                group.add_argument(
                    flag, type=type(default), dest=name, help=text,
                    metavar=flag[2:].upper().replace("-", "_"),
                )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors"
    )
    args = parser.parse_args(argv)

    for name, (valid, wording) in RANGES.items():
        value = getattr(args, name)
        if value is not None and not valid(value):
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            parser.error(f"{flag} must be {wording}, got {value}")
    splits = [getattr(args, name) for name in USER_FILE_SPLITS]
    if None not in splits and sum(splits) >= 1:
        parser.error("--test-split and --val-split must leave rows to train on (sum < 1)")
    if args.data is None:
        given = [flag for flag in ("text_column", "label_column", "format", "labels")
                 if getattr(args, flag) is not None]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} applies to --data FILE only")
    elif args.data_dir is not None:
        parser.error("--data-dir is the UCI set's folder; give it or --data FILE, not both")
    if args.labels is not None:
        args.labels = [label.strip() for label in args.labels.split(",")]
        if len(args.labels) < 2 or len(set(args.labels)) != len(args.labels) or not all(args.labels):
            parser.error("--labels must name 2 or more distinct classes, comma-separated")
    return args


def main(argv=None):
    """The command line; returns the exit status (errors raise, see `export.cli.run`)."""
    args = parse_args(argv)
    options = dict(TUTORIAL_RUN) if args.preset == "tutorial" else {}
    if args.data is not None:
        options.update(USER_FILE_SPLITS)
    for name in (*DEFAULTS, *MODEL_DEFAULTS):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CliError(f"{out} already holds a run; pass --overwrite or another --out")
    if args.data is not None:
        data = read_labelled_file(
            args.data,
            text_column=args.text_column or "text",
            label_column=args.label_column or "label",
            format=args.format,
            labels=args.labels,
        )
        model_name = "text_classifier"
    else:
        data = load_sentences(args.data_dir)
        model_name = "sentiment"
    counts = ", ".join(
        f"{name} {int((data.labels == i).sum())}" for i, name in enumerate(data.classes)
    )
    skipped = data.skipped_empty_labels
    print(
        f"data: {data.origin}: {len(data)} texts in {len(data.classes)} classes ({counts})"
        + (f"; skipped {skipped} row{'s' * (skipped != 1)} with an empty label" if skipped else "")
    )
    # A progress bar only for a person watching: never escape codes into a file.
    verbose = 1 if sys.stderr.isatty() else 0
    metrics = train(data, out, verbose=verbose, model_name=model_name, **options)
    if "test_accuracy_by_source" in metrics:
        parts = metrics["test_accuracy_by_source"].items()
        detail = "accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in parts)
    else:
        parts = metrics["per_class"].items()
        detail = "F1 " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in parts)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, macro-F1 "
        f"{metrics['test_macro_f1']:.4f} ({detail}), test loss "
        f"{metrics['test_loss']:.4f}, best epoch "
        f"{metrics['best_epoch']}/{metrics['epochs_run']}; wrote {out}/"
    )
    return 0


def console() -> int:
    """The `keras-attn-train` console script: `main` with one-line errors."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())

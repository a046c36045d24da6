"""Train the sentiment model: `python -m keras_attn.train --out runs/sentiment`.

Held-out test split (stratified by source and label, drawn from the seed),
validation split from the rest, early stopping that restores the best
weights, then metrics, curves and attention heatmaps written to `--out`.
"""

import argparse
import contextlib
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from export.files import atomic_dir
from keras_attn.data import load_sentences
from keras_attn.models import TUTORIAL, build_sentiment_model
from keras_attn.text import TextEncoder

# The recipe behind the bundled model (see README: "Training"); the model's
# own hyper-parameters default to those of `build_sentiment_model`.
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
    test_fraction=0.2,
    validation_fraction=0.1,
)
MODEL_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(
        build_sentiment_model
    ).parameters.items()
    if name in TUTORIAL
}
# The tutorial's run: its model, vocabulary, length, learning rate, 10 epochs.
TUTORIAL_RUN = dict(
    TUTORIAL, epochs=10, num_words=1000, seq_len=32, learning_rate=0.001,
    weight_decay=0.0, patience=3,
)


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


def binary_cross_entropy(labels, probabilities, epsilon=1e-7):
    p = np.clip(np.asarray(probabilities, np.float64), epsilon, 1 - epsilon)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def train(sentences, out, *, verbose="auto", **options):
    """Trains on `sentences`, writes the run into the folder `out`.

    Args:
        sentences: a `keras_attn.data.Sentences`.
        out: folder for model.keras, history.json, metrics.json and plots;
            written in full or not at all.
        verbose: Keras's `fit` verbosity (the progress bar by default).
        **options: any key of `DEFAULTS` or `MODEL_DEFAULTS`.

    Returns:
        The metrics dict also written to metrics.json.
    """
    unknown = set(options) - set(DEFAULTS) - set(MODEL_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    run = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
    hp = {
        **MODEL_DEFAULTS,
        **{k: v for k, v in options.items() if k in MODEL_DEFAULTS},
    }

    import keras
    import tensorflow as tf

    from keras_attn.plots import plot_attention, plot_curves
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

    texts = np.asarray(sentences.texts, dtype=object)
    labels = sentences.labels.astype(np.float32)
    sources = np.asarray(sentences.sources)
    strata = np.char.add(sources.astype(str), labels.astype(int).astype(str))
    rest, test = stratified_split(strata, run["test_fraction"], run["seed"])
    fit_part, val_part = stratified_split(
        strata[rest], run["validation_fraction"], run["seed"] + 1
    )
    train_idx, val_idx = rest[fit_part], rest[val_part]

    # The vocabulary comes from the training sentences only.
    encoder = TextEncoder.fit(
        texts[train_idx], num_words=run["num_words"], seq_len=run["seq_len"]
    )
    x = encoder.encode(texts)
    model = build_sentiment_model(encoder.vocab_size, run["seq_len"], **hp)
    # Trains through the probability head alone; the weights are shared.
    classifier = keras.Model(model.input, model.output["probability"])
    classifier.compile(
        optimizer=keras.optimizers.Adam(
            run["learning_rate"], weight_decay=run["weight_decay"] or None
        ),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    fitted = classifier.fit(
        x[train_idx],
        labels[train_idx],
        validation_data=(x[val_idx], labels[val_idx]),
        epochs=run["epochs"],
        batch_size=run["batch_size"],
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

    predicted = model.predict(x[test], batch_size=256, verbose=0)
    probability = predicted["probability"][:, 0]
    correct = (probability > 0.5) == (labels[test] > 0.5)
    metrics = {
        "test_accuracy": float(correct.mean()),
        "test_loss": binary_cross_entropy(labels[test], probability),
        "test_accuracy_by_source": {
            source: float(correct[sources[test] == source].mean())
            for source in sorted(set(sources[test]))
        },
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
        "data_sha256": sentences.checksum,
        "options": {**run, **hp},
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
    }

    with atomic_dir(out) as staging:
        save_model(model, staging / "model.keras", encoder)
        (staging / "history.json").write_text(json.dumps(history, indent=2))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for metric in ("loss", "accuracy"):
            plot_curves(history, metric, staging / f"{metric}.png",
                        metrics["best_epoch"])
        plot_attention(
            _attention_examples(encoder, model, texts[test], labels[test]),
            staging / "attention.png",
        )
    return metrics


def _attention_examples(encoder, model, texts, labels, count=3):
    """A few short test sentences with their attention among real words."""
    order = np.argsort([len(encoder.tokens(t)) for t in texts], kind="stable")
    # Sentences of 5+ words, alternating negative and positive.
    picked = []
    for label in (0, 1) * count:
        for i in order:
            if (
                labels[i] == label
                and i not in picked
                and 5 <= len(encoder.tokens(texts[i])) <= 12
            ):
                picked.append(i)
                break
        if len(picked) == count:
            break
    out = model.predict(encoder.encode(list(texts[picked])), verbose=0)
    examples = []
    for row, i in enumerate(picked):
        words = encoder.tokens(texts[i])
        n = len(words)
        p = float(out["probability"][row, 0])
        title = (
            f"{texts[i]}\n{encoder.labels[int(labels[i])]}, "
            f"P(positive)={p:.2f}"
        )
        examples.append((title, words, out["attention"][row, :n, :n]))
    return examples


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_attn.train",
        description=(
            "Train the attention sentiment model on UCI Sentiment Labelled "
            "Sentences; write model.keras (with its text encoder), "
            "history.json, metrics.json, loss.png, accuracy.png and "
            "attention.png into --out."
        ),
    )
    parser.add_argument(
        "--data-dir",
        help="folder with the three *_labelled.txt files "
        "(default: $KERAS_ATTN_DATA, the Keras cache, else a download)",
    )
    parser.add_argument(
        "--out", default="runs/sentiment",
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
            flag = "--" + name.replace("_", "-")
            text = f"recipe: {default}"
            if name in TUTORIAL_RUN:
                text += f", tutorial: {TUTORIAL_RUN[name]}"
            if isinstance(default, bool):
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, help=text
                )
            elif name in ("encoder", "pooling"):
                choices = {"encoder": ["conv", "lstm"],
                           "pooling": ["flatten", "max", "mean"]}[name]
                group.add_argument(flag, choices=choices, help=text)
            else:
                group.add_argument(flag, type=type(default), help=text)
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    options = dict(TUTORIAL_RUN) if args.preset == "tutorial" else {}
    for name in (*DEFAULTS, *MODEL_DEFAULTS):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    out = Path(args.out)
    try:
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise FileExistsError(
                f"{out} already holds a run; pass --overwrite or another --out"
            )
        sentences = load_sentences(args.data_dir)
        metrics = train(sentences, out, **options)
    except (OSError, ValueError, TypeError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    by_source = ", ".join(
        f"{k} {v:.3f}" for k, v in metrics["test_accuracy_by_source"].items()
    )
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} ({by_source}), "
        f"test loss {metrics['test_loss']:.4f}, best epoch "
        f"{metrics['best_epoch']}/{metrics['epochs_run']}; wrote {out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training curves, confusion matrices and attention heatmaps, written as PNG files."""

import matplotlib

matplotlib.use("Agg")  # Files only: no display on servers and CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history, metric, path, best_epoch=None):
    """Train and validation `metric` per epoch, as the tutorial plotted.

    `best_epoch` (1-based), the epoch whose weights were kept, is marked.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history[metric]) + 1)
    ax.plot(epochs, history[metric], "o-", label="train")
    if f"val_{metric}" in history:
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="gray", linestyle="--",
                   label=f"kept (epoch {best_epoch})")
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(counts, labels, path):
    """The confusion matrix: true class down, predicted class across, counts in cells.

    Args:
        counts: `(k, k)` integer array, `counts[i, j]` texts of class `i`
            predicted as class `j`.
        labels: the `k` class names.
        path: the PNG to write.
    """
    counts = np.asarray(counts)
    k = len(labels)
    side = 2.5 + 0.55 * k
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"test split: {counts.sum()} texts")
    # Dark text on light cells, light text on dark ones.
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                color="white" if count > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="texts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(examples, path):
    """Heatmaps of attention over the words, one panel per sentence.

    Each panel's colours span its own weights, smallest to largest: the
    weights of a 10-word sentence lie near 0.1, and on a 0-to-1 scale every
    cell would look the same.

    Args:
        examples: list of `(title, words, weights)`, `weights` the
            `(len(words), len(words))` attention among the real tokens.
        path: the PNG to write.
    """
    fig, axes = plt.subplots(
        1, max(len(examples), 1), figsize=(4.2 * max(len(examples), 1), 4.6), squeeze=False
    )
    for ax, (title, words, weights) in zip(axes[0], examples):
        weights = np.asarray(weights)
        image = ax.imshow(weights, cmap="viridis", vmin=weights.min(), vmax=weights.max())
        ticks = np.arange(len(words))
        ax.set_xticks(ticks, words, rotation=90, fontsize=8)
        ax.set_yticks(ticks, words, fontsize=8)
        ax.set(xlabel="attended word (key)", ylabel="word (query)")
        ax.set_title(title, fontsize=9, wrap=True)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    if not examples:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no test text has a known word", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

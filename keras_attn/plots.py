"""Training curves and attention heatmaps, written as PNG files."""

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


def plot_attention(examples, path):
    """Heatmaps of attention over the words, one panel per sentence.

    Args:
        examples: list of `(title, words, weights)`, `weights` the
            `(len(words), len(words))` attention among the real tokens.
        path: the PNG to write.
    """
    fig, axes = plt.subplots(
        1, len(examples), figsize=(4.2 * len(examples), 4.6), squeeze=False
    )
    for ax, (title, words, weights) in zip(axes[0], examples):
        image = ax.imshow(weights, cmap="viridis", vmin=0)
        ticks = np.arange(len(words))
        ax.set_xticks(ticks, words, rotation=90, fontsize=8)
        ax.set_yticks(ticks, words, fontsize=8)
        ax.set(xlabel="attended word (key)", ylabel="word (query)")
        ax.set_title(title, fontsize=9, wrap=True)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Figures as PNG files, drawn with matplotlib's non-interactive Agg backend."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fmnist_tf.data import CLASS_NAMES, NUM_CLASSES  # noqa: E402

DPI = 100


def _save(fig, path):
    fig.tight_layout()
    # Through TensorFlow's file layer: ``path`` may be a local file or a gs://, s3:// or ram:// URL.
    with tf.io.gfile.GFile(str(path), "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    plt.close(fig)
    return path


def save_image_grid(path, images, labels, columns=5, titles=None):
    """Save uint8 [n, 28, 28] images in a grid, each titled with its class name (or ``titles``)."""
    n = len(images)
    rows = max(1, -(-n // columns))
    columns = min(columns, n) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="binary")
            ax.set_title(titles[i] if titles else CLASS_NAMES[int(labels[i])], fontsize=8)
    return _save(fig, path)


def save_confusion_matrix(path, matrix):
    """Save a [10, 10] confusion matrix (rows true class, columns predicted) with its counts written in."""
    matrix = np.asarray(matrix)
    if matrix.shape != (NUM_CLASSES, NUM_CLASSES):
        raise ValueError(f"confusion matrix must be {NUM_CLASSES}x{NUM_CLASSES}, got shape {matrix.shape}")
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(NUM_CLASSES)
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Light text on the dark cells, dark on the light ones, so every count stays readable.
    threshold = matrix.max() / 2
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=color)
    return _save(fig, path)


def save_learning_curves(path, history):
    """Save loss and accuracy per epoch, train vs validation, from a Keras-style ``history`` dict."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        epochs = range(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_title(metric)
        ax.legend()
    return _save(fig, path)

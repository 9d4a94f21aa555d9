"""Figures as PNG files, drawn with matplotlib's non-interactive Agg backend."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from fmnist_tf.data import CLASS_NAMES  # noqa: E402


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

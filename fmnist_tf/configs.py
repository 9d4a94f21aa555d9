"""Per-model training settings: one small table read by ``training.Config`` and by the flags' defaults.

TF-free, so ``--help`` can show each model's defaults before TensorFlow loads. The softmax row is the
notebook's setting; the mlp, cnn and cnn_bn rows are the ones that reach the accuracies in BUILD_NOTES.md.
"""

import dataclasses
import os

from fmnist_tf.data.files import TFDS_NAME


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    optimizer: str
    batch_size: int
    epochs: int
    # TF thread-pool size (0: TF's default, one thread per core). The one-layer model's ops are too small to
    # split: one thread each for intra- and inter-op work is faster (BUILD_NOTES.md); convolutions want every core.
    threads: int
    # Random flips and shifts of the training examples (``data.augmentation``), drawn anew every epoch.
    augment: bool
    # The learning rate is multiplied by this every epoch (1: constant).
    learning_rate_decay: float


MODEL_DEFAULTS = {
    "softmax": ModelDefaults("rmsprop", batch_size=32, epochs=5, threads=1, augment=False, learning_rate_decay=1.0),
    "mlp": ModelDefaults("adam", batch_size=128, epochs=30, threads=0, augment=False, learning_rate_decay=1.0),
    "cnn": ModelDefaults("adam", batch_size=64, epochs=10, threads=0, augment=False, learning_rate_decay=1.0),
    "cnn_bn": ModelDefaults("adam", batch_size=128, epochs=28, threads=0, augment=True, learning_rate_decay=0.89),
}
MODELS = tuple(MODEL_DEFAULTS)
# Threads beyond a few per core only queue up, each with its own stack: a huge count exhausts memory first.
MAX_THREADS = 8 * (os.cpu_count() or 1)
OPTIMIZERS = ("rmsprop", "adam", "sgd")
# Exports land under the current directory, as command-line tools' outputs do.
SAVED_MODELS_DIR = "saved_models"


def model_name(model):
    """The served model's name (and base path's folder): the main job's is the dataset's name."""
    return TFDS_NAME if model == "softmax" else f"{TFDS_NAME}_{model}"


def default_export_dir(model):
    """Where ``model``'s versions land by default: ``saved_models/<model name>``, relative to the cwd."""
    return os.path.join(SAVED_MODELS_DIR, model_name(model))


def describe_defaults():
    """One line per model kind with its defaults, for ``--help``."""
    return "; ".join(
        f"{name}: {d.optimizer}, batch {d.batch_size}, {d.epochs} epochs" for name, d in MODEL_DEFAULTS.items()
    )

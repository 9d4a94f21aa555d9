"""Training in a warm process: the notebook's fit on NumPy arrays against ``training.train`` streaming the same
examples through the package's tf.data pipeline; and the notebook's fit with TF's default threads."""

import json
import pathlib
import time

import keras
import tensorflow as tf

from fmnist_tf import data, training
from fmnist_tf.model import build_model, make_optimizer

from notebook_code import BATCH_SIZE, EPOCHS, notebook_fit
from timing import python_last_line, summary

HERE = pathlib.Path(__file__).resolve().parent


def package_fit(train, validation, seed):
    """This package's training path on the same examples (``data.Examples``), streamed through its tf.data
    pipeline: training.train, default strategy."""
    keras.utils.set_random_seed(seed)
    model, optimizer = build_model(), make_optimizer()
    start = time.perf_counter()
    history, _ = training.train(
        model, optimizer, train, validation, EPOCHS, BATCH_SIZE, seed, tf.distribute.get_strategy(), verbose=False
    )
    return time.perf_counter() - start, history["val_accuracy"][-1], model


def bench_training(splits, repeats, seed=42):
    """Fit seconds and final validation accuracy of both ways, ``repeats`` times each, interleaved: the notebook
    on NumPy arrays in memory (its way), the package streaming ``splits`` (``data.Examples``) from disk."""
    arrays = {name: data.to_numpy(examples) for name, examples in splits.items()}
    notebook, package = [], []
    for _ in range(repeats):
        notebook.append(notebook_fit(arrays["train"], arrays["validation"], seed))
        package.append(package_fit(splits["train"], splits["validation"], seed))
    nb_seconds, pk_seconds = summary([s for s, _ in notebook]), summary([s for s, _, _ in package])
    return {
        "notebook_fit_seconds": nb_seconds,
        "package_fit_seconds": pk_seconds,
        "training_speedup": nb_seconds["median"] / pk_seconds["median"],
        "val_accuracy_notebook": float(notebook[-1][1]),
        "val_accuracy_package": float(package[-1][1]),
        "model": package[-1][2],
    }


# A `python -c` process looks for modules in its working folder: it is told this folder, where the notebook's code is.
NOTEBOOK_DEFAULT_THREADS = """
import json, sys
sys.path.insert(0, sys.argv[3])
from fmnist_tf import data
from notebook_code import notebook_fit
arrays = {k: data.to_numpy(v) for k, v in data.load_splits(42, "tfds", tfds_dir=sys.argv[2] or None).items()}
print(json.dumps([notebook_fit(arrays["train"], arrays["validation"], 42)[0] for _ in range(int(sys.argv[1]))]))
"""


def bench_notebook_default_threads(repeats, package_fit_seconds, tfds_dir=None):
    """The notebook's fit in a fresh process with TF's default thread pools, as the notebook ran, and the
    speed-up of ``package_fit_seconds`` (a ``summary``) over it."""
    last_line = python_last_line(NOTEBOOK_DEFAULT_THREADS, str(repeats), tfds_dir or "", str(HERE))
    seconds = summary(json.loads(last_line))
    return {
        "notebook_default_threads_fit_seconds": seconds,
        "training_speedup_vs_notebook_default_threads": seconds["median"] / package_fit_seconds["median"],
    }

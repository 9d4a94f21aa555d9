"""What a user feels, in fresh processes: the main job against the notebook's code as a script (whole process
and first fit), the main job on a fresh machine, and the start-up to a first training step."""

import json
import os
import pathlib
import sys
import tempfile
import time

from fmnist_tf import data

from notebook_code import EPOCHS, NOTEBOOK_SCRIPT
from timing import python_last_line, summary, timed_process

# The main job as a user runs it: the door scripts/train.py is these two lines (and absent from a non-editable install).
TRAIN_JOB = "from fmnist_tf.cli import train; train.run()"


def run_notebook_script(raw_dir=data.DEFAULT_RAW_DIR):
    """The notebook's code in a fresh Python process: (wall seconds, its figures: fit_seconds, accuracies)."""
    seconds, done = timed_process([sys.executable, "-c", NOTEBOOK_SCRIPT, str(raw_dir)])
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def run_train_job(workdir, tfds_dir=None, epochs=EPOCHS):
    """``train.py --epochs=5`` (defaults: TFDS source, softmax) in a fresh process exporting under ``workdir``:
    (wall seconds, its --metrics_json figures)."""
    metrics = pathlib.Path(workdir) / "metrics.json"
    flags_ = [f"--epochs={epochs}", f"--export_dir={pathlib.Path(workdir) / 'fashion_mnist'}", f"--metrics_json={metrics}"]
    if tfds_dir:
        flags_.append(f"--tfds_dir={tfds_dir}")
    seconds, _ = timed_process([sys.executable, "-c", TRAIN_JOB, *flags_], cwd=workdir)
    return seconds, json.loads(metrics.read_text())


def bench_whole_process(repeats, tfds_dir=None):
    """What a user feels: whole-process wall time of the main job against the notebook's code run as a script,
    fresh processes interleaved (notebook, package, notebook, ...), after one untimed run of each (TFDS
    prepared, its decoded copy saved (``data/decoded.py``), files in the page cache); and each side's first fit in
    its fresh process.
    """
    notebook, package = [], []
    with tempfile.TemporaryDirectory() as tmp:
        run_notebook_script()
        run_train_job(tmp, tfds_dir)
        load_before = os.getloadavg()[0]
        for _ in range(repeats):
            notebook.append(run_notebook_script())
            package.append(run_train_job(tmp, tfds_dir))
    nb_wall, pk_wall = summary([s for s, _ in notebook]), summary([s for s, _ in package])
    nb_fit, pk_fit = summary([f["fit_seconds"] for _, f in notebook]), summary([f["fit_seconds"] for _, f in package])
    return {
        "whole_process_seconds_notebook": nb_wall,
        "whole_process_seconds_package": pk_wall,
        "whole_process_speedup": nb_wall["median"] / pk_wall["median"],
        "cold_fit_seconds_notebook": nb_fit,
        "cold_fit_seconds_package": pk_fit,
        "cold_fit_speedup": nb_fit["median"] / pk_fit["median"],
        "whole_process_val_accuracy_notebook": summary([f["val_accuracy"] for _, f in notebook]),
        "whole_process_val_accuracy_package": summary([f["val_accuracy"] for _, f in package]),
        "whole_process_load_average": [load_before, os.getloadavg()[0]],
    }


def bench_first_run(repeats):
    """The main job on a fresh machine: ``train.py --epochs=5`` with an empty HOME (so TFDS prepares
    ``fashion_mnist`` into it from the shipped files, and its decoded copy is saved), timed as a whole process."""
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as home:
            env = {k: v for k, v in os.environ.items() if k not in ("TFDS_DATA_DIR", "XDG_CACHE_HOME")}
            env["HOME"] = home
            seconds.append(timed_process([sys.executable, "-c", TRAIN_JOB, f"--epochs={EPOCHS}"], cwd=home, env=env)[0])
    return {"first_run_seconds": summary(seconds)}


COLD_START = """
import sys, time
from fmnist_tf import data, training
from fmnist_tf.model import build_model, make_optimizer
import tensorflow as tf
splits = data.load_splits(42, "tfds", tfds_dir=sys.argv[1] or None)
small = {k: data.as_examples(v.blocks.take(1).map(lambda x, y: (x[:32], y[:32])), k) for k, v in splits.items()}
training.train(build_model(), make_optimizer(), small["train"], small["validation"], 1, 32, 42,
               tf.distribute.get_strategy(), verbose=False)
print(time.time())
"""


def bench_cold_start(tfds_dir=None):
    """Seconds from process start to the end of the first training step (TFDS prepared); and a prepare."""
    start = time.time()
    cold = float(python_last_line(COLD_START, tfds_dir or "")) - start
    with tempfile.TemporaryDirectory() as fresh:
        began = time.perf_counter()
        data.prepare_tfds(data.DEFAULT_RAW_DIR, fresh)
        prepare = time.perf_counter() - began
    return {"cold_start_seconds": cold, "tfds_prepare_seconds": prepare}

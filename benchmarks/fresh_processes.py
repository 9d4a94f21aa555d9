"""Side-by-side measurements: the notebook's way against this package's, on the same machine and data.

Each ``bench_*`` function returns a dict of figures; ``scripts/benchmark.py`` prints them as a table.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from fmnist_tf import baseline, data, training
from fmnist_tf.serving import export, lite
from fmnist_tf.data import decoded
from fmnist_tf.model import build_model, make_optimizer

EPOCHS, BATCH_SIZE = 5, 32


def summary(values):
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def notebook_fit(train, validation, seed):
    """The notebook's training, as it was written: float64 arrays, default compile, fit for 5 epochs."""
    keras.utils.set_random_seed(seed)
    (x, y), (xv, yv) = train, validation
    x_train, x_valid = x.reshape(-1, 784) / 255.0, xv.reshape(-1, 784) / 255.0
    model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
    start = time.perf_counter()
    # verbose=0: the notebook printed a progress bar, which only adds time to its side.
    history = model.fit(x_train, y, epochs=EPOCHS, batch_size=BATCH_SIZE, validation_data=(x_valid, yv), verbose=0)
    return time.perf_counter() - start, history.history["val_accuracy"][-1]


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


def _python_last_line(code, *args):
    """Run ``code`` in a fresh Python process with ``args``; return the last line it printed.

    A fresh process starts TF with its own defaults, whatever this process configured; "" stands for None.
    """
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


NOTEBOOK_DEFAULT_THREADS = """
import json, sys
from fmnist_tf import benchmark, data
arrays = {k: data.to_numpy(v) for k, v in data.load_splits(42, "tfds", tfds_dir=sys.argv[2] or None).items()}
print(json.dumps([benchmark.notebook_fit(arrays["train"], arrays["validation"], 42)[0] for _ in range(int(sys.argv[1]))]))
"""


def bench_notebook_default_threads(repeats, package_fit_seconds, tfds_dir=None):
    """The notebook's fit in a fresh process with TF's default thread pools, as the notebook ran, and the
    speed-up of ``package_fit_seconds`` (a ``summary``) over it."""
    seconds = summary(json.loads(_python_last_line(NOTEBOOK_DEFAULT_THREADS, str(repeats), tfds_dir or "")))
    return {
        "notebook_default_threads_fit_seconds": seconds,
        "training_speedup_vs_notebook_default_threads": seconds["median"] / package_fit_seconds["median"],
    }


def _images_per_second(ds, repeats=1):
    rates = []
    for _ in range(repeats):
        start, count = time.perf_counter(), 0
        for batch in ds:
            count += int(tf.shape(batch[0])[0])
        rates.append(count / (time.perf_counter() - start))
    return rates


def bench_pipelines(tfds_dir, splits, seed=42):
    """Images/s of the package's pipelines and of TFDS's Keras example pipeline, each iterated in Python."""
    import tensorflow_datasets as tfds

    rates = {}
    builder = data.prepare_tfds(data.DEFAULT_RAW_DIR, tfds_dir)
    rates["tfds_records_decoded_per_example"] = _images_per_second(decoded.tfds_blocks(builder, "train"))[0]
    rates["tfds_decoded_copy"] = statistics.median(_images_per_second(splits["train"].blocks, repeats=3))
    rates["idx_files"] = _images_per_second(data.load_examples("train", "idx").blocks)[0]
    rates["package_training_data_epoch"] = statistics.median(
        _images_per_second(data.training_data(splits["train"], BATCH_SIZE, seed, range(1)), repeats=3)
    )

    # TFDS docs/keras_example: map(normalize) -> cache -> shuffle -> batch -> prefetch.
    def normalize_img(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    canonical = tfds.load(data.TFDS_NAME, split="train", as_supervised=True, data_dir=tfds_dir)
    canonical = (
        canonical.map(normalize_img, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(60_000)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    first, *cached = _images_per_second(canonical, repeats=3)
    rates["tfds_keras_example_first_epoch"] = first
    rates["tfds_keras_example_cached_epoch"] = statistics.median(cached)
    return {"pipeline_images_per_s": rates}


def _latencies_ms(fn, calls, warmup=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return np.percentile(times, 50), np.percentile(times, 99)


def bench_serving(model, test_images):
    """serving_default of the exported SavedModel against model.predict, same inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_saved_model(model, f"{tmp}/fashion_mnist")
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        one, batch, everything = (tf.constant(test_images[:n]) for n in (1, export.MAX_BATCH, len(test_images)))
        # A request takes at most export.MAX_BATCH images: the whole test set goes as a client sends it, in parts.
        parts = [everything[i : i + export.MAX_BATCH] for i in range(0, len(test_images), export.MAX_BATCH)]
        p50, p99 = _latencies_ms(lambda: serve(images=one), calls=500)
        batch_ms, _ = _latencies_ms(lambda: serve(images=batch), calls=30, warmup=3)
        all_ms, _ = _latencies_ms(lambda: [serve(images=part) for part in parts], calls=10, warmup=2)
    pixels_one, pixels_batch, pixels_all = (data.normalize(x) for x in (one, batch, everything))
    predict_p50, predict_p99 = _latencies_ms(lambda: model.predict(pixels_one, verbose=0), calls=100, warmup=5)
    predict_batch_ms, _ = _latencies_ms(lambda: model.predict(pixels_batch, verbose=0), calls=20, warmup=2)
    predict_all_ms, _ = _latencies_ms(lambda: model.predict(pixels_all, verbose=0), calls=5, warmup=1)
    return {
        "serving_p50_ms_batch1": p50,
        "serving_p99_ms_batch1": p99,
        "serving_images_per_s_batch1024": 1024 / batch_ms * 1e3,
        "serving_images_per_s_all_test": len(test_images) / all_ms * 1e3,
        "predict_p50_ms_batch1": predict_p50,
        "predict_p99_ms_batch1": predict_p99,
        "predict_images_per_s_batch1024": 1024 / predict_batch_ms * 1e3,
        "predict_images_per_s_all_test": len(test_images) / predict_all_ms * 1e3,
    }


def bench_lite(model, train_images, test_images):
    """Batch-1 latency of the model's LiteRT float32 and int8 conversions, measured as bench_serving measures
    the SavedModel signature (same image, calls and warmup)."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        version = export.export_saved_model(model, f"{tmp}/fashion_mnist")
        paths, _ = lite.write_models(version, f"{tmp}/lite", lite.representative_images(train_images))
        one = {lite.INPUT_NAME: test_images[:1]}
        for kind, path in paths.items():
            runner = lite.load_lite_model(path)
            p50, p99 = _latencies_ms(lambda: runner(**one), calls=500)
            figures[f"lite_{kind}_p50_ms_batch1"], figures[f"lite_{kind}_p99_ms_batch1"] = p50, p99
    return figures


def bench_baseline(source="idx", tfds_dir=None):
    """The notebook's cross_validate call against scripts/baseline.py's path: seconds and scores."""
    from sklearn.model_selection import cross_validate

    train, test = baseline.load_baseline_arrays(source, tfds_dir=tfds_dir)
    x64 = train[0].astype(np.float64)  # the notebook's X_train / 255.
    start = time.perf_counter()
    with baseline.expected_convergence_warnings():
        notebook = cross_validate(baseline.make_classifier(), x64, train[1], cv=5, n_jobs=-1)
    notebook_seconds = time.perf_counter() - start
    package = baseline.cross_validate_baseline(*train)
    return {
        "baseline_notebook_seconds": notebook_seconds,
        "baseline_package_seconds": package["cv_seconds"],
        "baseline_speedup": notebook_seconds / package["cv_seconds"],
        "baseline_notebook_cv_scores": [float(s) for s in notebook["test_score"]],
        "baseline_package_cv_scores": package["cv_scores"],
    }


# The notebook's code as a script: the files loaded as keras.datasets.fashion_mnist.load_data loads them
# (gzip + np.frombuffer), /255., sklearn's split, the one-layer model, compile, fit, evaluate on the test set.
# verbose=0: the notebook printed progress bars, which would only add time to its side.
NOTEBOOK_SCRIPT = """
import gzip, json, sys, time
import numpy as np
import tensorflow as tf
from tensorflow import keras
from sklearn.model_selection import train_test_split


def load_data(folder):
    def read(name, offset):
        with gzip.open(f"{folder}/{name}", "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    y_train, y_test = read("train-labels-idx1-ubyte.gz", 8), read("t10k-labels-idx1-ubyte.gz", 8)
    x_train = read("train-images-idx3-ubyte.gz", 16).reshape(len(y_train), 28, 28)
    x_test = read("t10k-images-idx3-ubyte.gz", 16).reshape(len(y_test), 28, 28)
    return (x_train, y_train), (x_test, y_test)


(X_train_full, y_train_full), (X_test, y_test) = load_data(sys.argv[1])
X_train_full, X_test = X_train_full.reshape(-1, 784) / 255.0, X_test.reshape(-1, 784) / 255.0
X_train, X_valid, y_train, y_valid = train_test_split(X_train_full, y_train_full, test_size=0.2, random_state=42)
model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
began = time.perf_counter()
history = model.fit(X_train, y_train, epochs=5, batch_size=32, validation_data=(X_valid, y_valid), verbose=0)
fit_seconds = time.perf_counter() - began
test_loss, test_accuracy = model.evaluate(X_test, y_test, verbose=0)
print(json.dumps({"fit_seconds": fit_seconds, "val_accuracy": history.history["val_accuracy"][-1],
                  "test_accuracy": test_accuracy}))
"""
# The main job as a user runs it: the door scripts/train.py is these two lines (and absent from a non-editable install).
TRAIN_JOB = "from fmnist_tf.cli import train; train.run()"


def _timed_process(command, **kwargs):
    """(wall seconds, CompletedProcess) of one fresh process; RuntimeError with its stderr's end if it fails."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, done


def run_notebook_script(raw_dir=data.DEFAULT_RAW_DIR):
    """The notebook's code in a fresh Python process: (wall seconds, its figures: fit_seconds, accuracies)."""
    seconds, done = _timed_process([sys.executable, "-c", NOTEBOOK_SCRIPT, str(raw_dir)])
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def run_train_job(workdir, tfds_dir=None, epochs=EPOCHS):
    """``train.py --epochs=5`` (defaults: TFDS source, softmax) in a fresh process exporting under ``workdir``:
    (wall seconds, its --metrics_json figures)."""
    metrics = pathlib.Path(workdir) / "metrics.json"
    flags_ = [f"--epochs={epochs}", f"--export_dir={pathlib.Path(workdir) / 'fashion_mnist'}", f"--metrics_json={metrics}"]
    if tfds_dir:
        flags_.append(f"--tfds_dir={tfds_dir}")
    seconds, _ = _timed_process([sys.executable, "-c", TRAIN_JOB, *flags_], cwd=workdir)
    return seconds, json.loads(metrics.read_text())


def bench_whole_process(repeats, tfds_dir=None):
    """What a user feels: whole-process wall time of the main job against the notebook's code run as a script,
    fresh processes interleaved (notebook, package, notebook, ...), after one untimed run of each (TFDS
    prepared, its array cache made, files in the page cache); and each side's first fit in its fresh process.
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
    ``fashion_mnist`` into it from the shipped files, and the array cache is made), timed as a whole process."""
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as home:
            env = {k: v for k, v in os.environ.items() if k not in ("TFDS_DATA_DIR", "XDG_CACHE_HOME")}
            env["HOME"] = home
            seconds.append(_timed_process([sys.executable, "-c", TRAIN_JOB, f"--epochs={EPOCHS}"], cwd=home, env=env)[0])
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
    cold = float(_python_last_line(COLD_START, tfds_dir or "")) - start
    with tempfile.TemporaryDirectory() as fresh:
        began = time.perf_counter()
        data.prepare_tfds(data.DEFAULT_RAW_DIR, fresh)
        prepare = time.perf_counter() - began
    return {"cold_start_seconds": cold, "tfds_prepare_seconds": prepare}


# One epoch of run(datasets=...) over blocks saved with Dataset.save, in a fresh process: the peak RSS of the run
# (Linux's high-water mark, reset once TensorFlow is imported: writing 5 to clear_refs) and the rate.
SCALING_RUN = """
import json, sys
import tensorflow as tf
from fmnist_tf import data, training


def rss_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


train_dir, test_dir, buffer = sys.argv[1], sys.argv[2], int(sys.argv[3])
datasets = {"train": tf.data.Dataset.load(train_dir), "validation": tf.data.Dataset.load(test_dir),
            "test": tf.data.Dataset.load(test_dir)}
config = training.Config(epochs=1, export_dir="", shuffle_buffer=buffer, verbose=False)
before = rss_mb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
figures = training.run(config, datasets=datasets)
print(json.dumps({"fit_seconds": figures["fit_seconds"], "rss_before_mb": before, "peak_rss_mb": rss_mb("VmHWM:")}))
"""


def bench_scaling(train, test, copies=10, shuffle_buffer=10_000):
    """One epoch over the ``train`` examples and over ``copies`` times as many examples, each saved on disk with
    ``Dataset.save`` (the 10x copies each with its pixels flipped left-right on odd copies, so they differ),
    at a fixed ``shuffle_buffer``, in fresh processes: peak RSS (MB) and examples/s of each, and what holding
    the larger one in memory would add (its uint8 pixels and int64 labels)."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        train.blocks.save(f"{tmp}/x1")
        test.blocks.save(f"{tmp}/test")

        def copy(i):
            return train.blocks.map(lambda x, y: (x if i % 2 == 0 else tf.reverse(x, [-1]), y))

        tf.data.Dataset.range(copies).flat_map(copy).save(f"{tmp}/x{copies}")
        for name, count in (("x1", train.count), (f"x{copies}", copies * train.count)):
            seconds, done = _timed_process(
                [sys.executable, "-c", SCALING_RUN, f"{tmp}/{name}", f"{tmp}/test", str(shuffle_buffer)]
            )
            run = json.loads(done.stdout.strip().splitlines()[-1])
            figures[name] = {"examples": count, "rss_before_mb": run["rss_before_mb"], "peak_rss_mb": run["peak_rss_mb"],
                             "examples_per_s": count / run["fit_seconds"], "process_seconds": seconds}  # fmt: skip
    larger = figures[f"x{copies}"]
    return {
        "scaling": figures,
        "scaling_shuffle_buffer": shuffle_buffer,
        "scaling_added_rss_mb": larger["peak_rss_mb"] - figures["x1"]["peak_rss_mb"],
        "scaling_in_memory_would_add_mb": (copies - 1) * train.count * (data.NUM_PIXELS + 8) / 2**20,  # MiB, as RSS
    }

"""Train, evaluate and export: ``run(config) -> dict of figures``. No flag parsing here.

One training step (Keras model, Keras optimizer) serves every ``tf.distribute`` strategy: under the default
strategy and OneDeviceStrategy it runs as one in-graph loop per epoch, under any other (even with one
replica) as ``strategy.run`` over a distributed dataset. Not
``model.fit``: Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), and this
loop is also several times faster on CPU (BUILD_NOTES.md has the figures).
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from fmnist_tf import configs, data, export
from fmnist_tf.checkpoints import HISTORY_KEYS, Checkpoints, Workdir, empty_history
from fmnist_tf.distribute import (
    agree_across_workers,
    choose_strategy,
    configure_threads,
    is_chief,
    runs_in_graph_loop,
    strategy_devices,
    strategy_name,
    worker_count,
)
from fmnist_tf.model import build_model, make_optimizer

LEARNING_CURVES_FILE = "learning_curves.png"
WARMUP_EXAMPLES = 4


@dataclasses.dataclass
class Config:
    """Everything one training run needs; ``validate()`` says what is wrong before any work starts."""

    # None: the model's own default (configs.MODEL_DEFAULTS), filled in when the Config is made.
    epochs: int | None = None
    batch_size: int | None = None  # the global batch: split across replicas, so the math is the same on any cluster
    optimizer: str | None = None
    learning_rate: float | None = None
    seed: int = 42
    model: str = "softmax"
    source: str = "tfds"
    raw_dir: str = str(data.DEFAULT_RAW_DIR)
    tfds_dir: str | None = None
    export_dir: str | None = None  # None: configs.default_export_dir(model); "": no export
    workdir: str | None = None
    threads: int | None = None  # TF thread pools (0: TF's default); None: the model's default
    verbose: bool = True

    def __post_init__(self):
        defaults = configs.MODEL_DEFAULTS.get(self.model)
        if defaults is None:
            return  # validate() names the bad model
        for name in ("epochs", "batch_size", "optimizer", "threads"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(defaults, name))
        if self.export_dir is None:
            self.export_dir = configs.default_export_dir(self.model)

    def validate(self):
        """Raise ValueError naming the first bad field; check the folders the run reads and writes."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be 0 (TF's default) or a positive integer, got {self.threads!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        for name, allowed in (("source", data.SOURCES), ("model", configs.MODELS), ("optimizer", configs.OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        data.check_raw_dir(self.raw_dir)
        if self.export_dir:
            export.check_writable(self.export_dir)
            export.read_listable_model_config(export.model_config_path(self.export_dir), self.export_dir)


def make_deterministic(seed):
    """Seed Python, NumPy and TF, and make TF ops deterministic: same seed, same bits."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def evaluate(model, images, labels, batch_size=2_000):
    """(mean sparse categorical cross-entropy, accuracy) of ``model`` on uint8 ``images``."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        probabilities = model(data.normalize(images[start : start + batch_size]), training=False)
        y = labels[start : start + batch_size]
        loss_sum += float(tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, probabilities)))
        correct += int(np.sum(np.argmax(probabilities, axis=-1) == y))
    return loss_sum / len(labels), correct / len(labels)


def _step_fn(model, optimizer, replicas):
    """One optimizer step on one replica's slice; returns [loss sum, correct, count] of the slice."""

    def step(x, y):
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
            # Gradients are summed across replicas, each over an equal slice of the global batch.
            scaled = loss / replicas
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        count = tf.cast(tf.shape(y)[0], tf.float32)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, -1), y), tf.float32))
        return tf.stack([loss * count, correct, count])

    return step


def _distributed_epoch_fn(strategy, step, images, labels, batch_size, seed, shard):
    """epoch -> (global [loss sum, correct, count], examples this worker's replicas trained on).

    ``strategy.run`` over a dataset distributed by input pipeline: what several replicas need.
    """

    @tf.function
    def run_steps(iterator):
        totals, local = tf.zeros([3]), tf.constant(0.0)
        for x, y in iterator:
            per_replica = strategy.run(step, args=(x, y))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            local += tf.add_n([r[2] for r in strategy.experimental_local_results(per_replica)])
        return totals, local

    def train_epoch(epoch):
        dataset_fn = _epoch_dataset_fn(images, labels, batch_size, seed, epoch, strategy.num_replicas_in_sync, shard)
        return run_steps(iter(strategy.distribute_datasets_from_function(dataset_fn)))

    return train_epoch


def _in_graph_epoch_fn(strategy, step, images, labels, batch_size, seed):
    """epoch -> (global [loss sum, correct, count], examples trained on), for the default strategy or
    OneDeviceStrategy (``runs_in_graph_loop``).

    The same steps as the distributed loop, but the whole epoch is one tf.while_loop over its batches of
    example indices: no per-step iterator round trip, which was most of the time per step on CPU
    (BUILD_NOTES.md). Other strategies cannot use it: their gradient all-reduce (a merge_call, even
    with one replica) cannot sit in a loop.
    """

    def steps(batches):
        # Each step gathers and normalizes its own 32 examples: materializing the epoch's 150 MB of floats
        # first cost more than the steps themselves on one CPU thread (BUILD_NOTES.md, issue 12). Same bits.
        def body(i, totals):
            index = batches[i]
            return i + 1, totals + step(data.normalize(tf.gather(images, index)), tf.gather(labels, index))

        return tf.while_loop(lambda i, _: i < tf.shape(batches)[0], body, (tf.constant(0), tf.zeros([3])))[1]

    # No Python control flow on tensors here (the loop is an explicit tf.while_loop): autograph's source
    # conversion would only add tracing time to the first epoch (0.3 s of CPU here).
    @tf.function(autograph=False)
    def run_steps(batches):
        return strategy.run(steps, args=(batches,))

    def train_epoch(epoch):
        totals = tf.zeros([3])
        for batches in data.epoch_index_batches(int(labels.shape[0]), batch_size, seed, epoch):
            totals += run_steps(batches)
        return totals, totals[2]

    return train_epoch


def _epoch_dataset_fn(images, labels, batch_size, seed, epoch, replicas, shard):
    def dataset_fn(context):
        shard.update(input_pipeline=context.input_pipeline_id, input_pipelines=context.num_input_pipelines)
        local = replicas // context.num_input_pipelines
        return data.epoch_batches(
            images, labels, batch_size, seed, epoch,
            num_slices=replicas, first_slice=context.input_pipeline_id * local, local_slices=local,
        )  # fmt: skip

    return dataset_fn


def fingerprint(*parts):
    """A 48-bit integer of NumPy arrays and JSON-able values: equal parts, equal numbers; different parts
    differ but for a 2^-48 chance."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return int(digest.hexdigest()[:12], 16)


def _check_workers_agree(strategy, train_arrays, start, model, optimizer, epochs, batch_size, seed):
    """Every worker of a cluster trains the same steps on the same data from the same epoch, or all stop
    saying why: a worker that went its own way would leave the others waiting in a collective."""
    # The optimizer's config but its name, which Keras numbers per process (adam, adam_1, ...).
    optimizer_config = {k: v for k, v in optimizer.get_config().items() if k != "name"}
    steps_settings = [model.name, type(optimizer).__name__, optimizer_config, epochs, batch_size, seed]
    agree_across_workers(strategy, [
        ("the training data's fingerprint", fingerprint(*train_arrays),
         "give every worker the same --source, --seed and data files"),
        ("the epoch to resume after", start,
         "give every worker one --workdir that all of them reach (a shared folder or a bucket)"),
        ("the training settings' fingerprint", fingerprint(steps_settings), "give every worker the same flags"),
    ])  # fmt: skip


def train(model, optimizer, train_arrays, validation_arrays, epochs, batch_size, seed, strategy,
          workdir=None, verbose=True, after_epoch=None):  # fmt: skip
    """Train ``model`` for ``epochs``; return (Keras-style history dict, this worker's shard figures).

    With ``workdir``, a run killed at any point and started again resumes after its last completed
    epoch and ends with the same weights as an uninterrupted run. ``after_epoch(epoch)`` is called once
    each epoch's checkpoint is written.
    """
    images, labels = (tf.constant(a) for a in train_arrays)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        # Eagerly, in the strategy's scope: variables created inside a replicated tf.function break it.
        optimizer.build(model.trainable_variables)
    step = _step_fn(model, optimizer, replicas)
    shard = {"input_pipeline": 0, "input_pipelines": 1, "examples": 0}
    if runs_in_graph_loop(strategy):
        train_epoch = _in_graph_epoch_fn(strategy, step, images, labels, batch_size, seed)
    else:
        train_epoch = _distributed_epoch_fn(strategy, step, images, labels, batch_size, seed, shard)
    chief = is_chief(strategy)
    checkpoints = Checkpoints(workdir, model, optimizer, chief) if workdir else None
    start, history = checkpoints.restore() if checkpoints else (0, empty_history())
    if worker_count(strategy) > 1:
        _check_workers_agree(strategy, train_arrays, start, model, optimizer, epochs, batch_size, seed)
    if start >= epochs and verbose:
        print(f"Run in {workdir} finished all {start} epochs before: nothing to train")
    elif start and verbose:
        print(f"Resuming from {workdir} after epoch {start}")
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard")) if workdir and chief else None
    steps = -(-len(train_arrays[1]) // batch_size)
    try:
        for epoch in range(start, epochs):
            began = time.perf_counter()
            totals, local = train_epoch(epoch)
            loss_sum, correct, count = totals.numpy()
            shard["examples"] += int(local)
            val_loss, val_accuracy = evaluate(model, *validation_arrays)
            figures = dict(zip(HISTORY_KEYS, (loss_sum / count, correct / count, val_loss, val_accuracy)))
            for key, value in figures.items():
                history[key].append(float(value))
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
                print(f"{steps}/{steps} - {time.perf_counter() - began:.2f}s - " + " - ".join(
                    f"{k}: {v:.4f}" for k, v in figures.items()))  # fmt: skip
            if writer:
                with writer.as_default(step=epoch + 1):
                    for key, value in figures.items():
                        tf.summary.scalar(key, value)
            if checkpoints:
                checkpoints.save(epoch + 1, history)
            if after_epoch:
                after_epoch(epoch + 1)
    finally:
        if writer:
            writer.close()  # flushed now, not left to the process's end
        if checkpoints:
            checkpoints.close()
    return history, shard


def run(config, datasets=None, strategy=None):
    """Train ``config.model``, evaluate on validation and test, export; return a dict of figures.

    ``datasets`` (dict of raw train/validation/test Datasets) and ``strategy`` replace the defaults,
    for tests and for callers with their own data or cluster. With ``config.workdir``, the workdir's
    recorded settings are checked and its lock taken before any data is read (``checkpoints.Workdir``).
    """
    start = time.perf_counter()
    config.validate()
    configure_threads(config.threads)
    strategy = strategy or choose_strategy()
    chief = is_chief(strategy)
    workdir = Workdir(config.workdir) if config.workdir else None
    # Only the chief writes to the workdir; the other workers of a cluster read its checkpoints.
    with workdir.lock() if workdir and chief else contextlib.nullcontext():
        figures = _run(config, datasets, strategy, chief, workdir)
    figures["seconds"] = time.perf_counter() - start
    return figures


def _run(config, datasets, strategy, chief, workdir):
    settings = dataclasses.asdict(config)
    finished = False
    if workdir:
        finished = workdir.check(settings, config.epochs) == config.epochs
        if chief:
            workdir.record(settings)
    devices = strategy_devices(strategy)
    if config.verbose:
        print(f"strategy {strategy_name(strategy)} on {', '.join(devices)}")
    if datasets is None:
        arrays = data.load_split_arrays(config.seed, config.source, config.raw_dir, config.tfds_dir)
    else:
        arrays = {name: data.to_numpy(ds) for name, ds in datasets.items()}
    # After the data: a first TFDS prepare draws random numbers, which would shift the weight init.
    make_deterministic(config.seed)
    with strategy.scope():
        model = build_model(config.model)
        optimizer = make_optimizer(config.optimizer, config.learning_rate)

    refresh_lock = (lambda _: workdir.refresh_lock()) if workdir and chief else None
    fit_start = time.perf_counter()
    history, shard = train(model, optimizer, arrays["train"], arrays["validation"], config.epochs, config.batch_size,
                           config.seed, strategy, config.workdir, config.verbose, refresh_lock)  # fmt: skip
    fit_seconds = time.perf_counter() - fit_start
    # The last epoch evaluated these weights on validation already (or, resumed, its checkpoint did).
    val_loss, val_accuracy = history["val_loss"][-1], history["val_accuracy"][-1]
    test_loss, test_accuracy = evaluate(model, *arrays["test"])

    figures = {
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "history": history,
        "fit_seconds": fit_seconds,
        "strategy": strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "devices": devices,
        "chief": chief,
        "shard": shard,
        "config": settings,
        "export_path": None,
        "exported_before": False,
    }
    if workdir and chief:
        from fmnist_tf import plots  # matplotlib: only runs with a workdir draw, so only they import it

        plots.save_learning_curves(os.path.join(config.workdir, LEARNING_CURVES_FILE), history)
    if config.export_dir:
        # A finished run started again trains nothing: the version it exported is still its result.
        previous = workdir.previous_export(config.export_dir) if finished else None
        if previous:
            figures["export_path"], figures["exported_before"] = previous, True
        else:
            provenance = export.training_provenance(figures["config"], figures)
            figures["export_path"] = _export(
                model, config.export_dir, arrays["test"][0][:WARMUP_EXAMPLES], chief, provenance
            )
            if workdir and chief:
                workdir.record_export(config.export_dir, figures["export_path"])
    return figures


def _export(model, export_dir, warmup_images, chief, provenance):
    """Export a version from the chief; other workers export to a scratch folder and delete it."""
    if chief:
        path = export.export_saved_model(model, export_dir, warmup_images=warmup_images, provenance=provenance)
        export.write_model_config(export.model_config_path(export_dir), export_dir)
        return str(path)
    scratch = tempfile.mkdtemp(prefix="fmnist-worker-export-")
    try:
        export.export_saved_model(model, os.path.join(scratch, os.path.basename(export_dir.rstrip("/"))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None

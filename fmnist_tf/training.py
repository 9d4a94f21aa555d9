"""Train, evaluate and export: ``run(config) -> dict of figures``. No flag parsing here.

The data comes through the tf.data pipeline (``data.training_data``), distributed with
``distribute_datasets_from_function``; one training step (Keras model, Keras optimizer) and one loop serve every
``tf.distribute`` strategy: an epoch is one call of a tf.function that draws chunks of steps from the
iterator and runs each step with ``strategy.run``. Not ``model.fit``: Keras 3's ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and this loop is also several times faster on CPU.
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

from fmnist_tf import configs, data, storage
from fmnist_tf.serving import export
from fmnist_tf.checkpoints import HISTORY_KEYS, Checkpoints, Workdir, empty_history
from fmnist_tf.distribute import (
    agree_across_workers,
    choose_strategy,
    configure_threads,
    is_chief,
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
    shuffle_buffer: int | None = None  # examples; None: the whole training split (a full shuffle)
    augment: bool | None = None  # flips and shifts of the training examples; None: the model's default
    learning_rate_decay: float | None = None  # the learning rate's factor per epoch; None: the model's default
    verbose: bool = True

    def __post_init__(self):
        defaults = configs.MODEL_DEFAULTS.get(self.model)
        if defaults is None:
            return  # validate() names the bad model
        for name in ("epochs", "batch_size", "optimizer", "threads", "augment", "learning_rate_decay"):
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
        if self.shuffle_buffer is not None and (
            isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1
        ):
            raise ValueError(f"shuffle_buffer must be a positive integer, got {self.shuffle_buffer!r}")
        if not isinstance(self.threads, int) or not 0 <= self.threads <= configs.MAX_THREADS:
            raise ValueError(
                f"threads must be 0 (TF's default) or a positive integer up to {configs.MAX_THREADS} (8 per core), "
                f"got {self.threads!r}"
            )
        if not isinstance(self.augment, bool):  # noqa: TRY004 (every bad field is a ValueError, one line in the CLI)
            raise ValueError(f"augment must be True or False, got {self.augment!r}")
        if isinstance(self.learning_rate_decay, bool) or not (
            isinstance(self.learning_rate_decay, (int, float)) and 0 < self.learning_rate_decay <= 1
        ):
            raise ValueError(f"learning_rate_decay must be in (0, 1], got {self.learning_rate_decay!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        for name, allowed in (("source", data.SOURCES), ("model", configs.MODELS), ("optimizer", configs.OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        data.check_raw_dir(self.raw_dir)
        if self.workdir:
            storage.check_glob_free(self.workdir, "workdir")
        if self.export_dir:
            export.check_writable(self.export_dir)
            export.read_listable_model_config(export.model_config_path(self.export_dir), self.export_dir)


def make_deterministic(seed):
    """Seed Python, NumPy and TF, and make TF ops deterministic: same seed, same bits."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_evaluator(model):
    """A function (Examples, batches) -> (mean sparse categorical cross-entropy, accuracy) of ``model`` on the
    batches (default: ``data.evaluation_data`` of the examples), in one graph."""

    @data.plain_function
    def add_batch(totals, batch):
        (x, y), (loss_sum, correct) = batch, totals
        probabilities = model(x, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(y, probabilities)
        loss_sum += tf.cast(tf.reduce_sum(losses), tf.float64)
        correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, -1), y), tf.int64))
        return loss_sum, correct

    # No Python control flow on tensors: autograph's conversion would only add tracing time.
    @tf.function(autograph=False)
    def sums(batches):
        return batches.reduce((tf.constant(0.0, tf.float64), tf.constant(0, tf.int64)), add_batch)

    def evaluate(examples, batches=None):
        try:
            loss_sum, correct = sums(data.evaluation_data(examples) if batches is None else batches)
        except data.READ_ERRORS as e:
            raise examples.read_error(e) from e
        return float(loss_sum) / examples.count, int(correct) / examples.count

    return evaluate


def _step_fn(model, optimizer, replicas):
    """One step on one replica: rows [begin, begin + size) of its chunk; returns [loss sum, correct, count].

    ``size`` is a Python int for full batches, so the step's shapes are static (a quarter faster on CPU than
    the same ops on an unknown batch dimension), or a tensor for an epoch's final partial batch.
    """

    def step(chunk_x, chunk_y, begin, size):
        x = tf.slice(chunk_x, tf.stack([begin, 0]), tf.stack([size, -1]))
        y = tf.slice(chunk_y, tf.reshape(begin, [1]), tf.reshape(size, [1]))
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


def _epoch_fn(strategy, step, per_replica_batch, partial_batch):
    """(iterator, chunks) -> (global [loss sum, correct, count], examples this worker's replicas trained on).

    One call runs a whole epoch in the graph: the loop draws the epoch's ``chunks`` from the distributed
    dataset's iterator and runs each chunk's steps with ``strategy.run``, so nothing goes back to Python
    between steps. The same loop serves every strategy: under the default one ``strategy.run`` is a plain call.
    ``partial_batch``: an epoch ends with a partial batch (one replica only: several get whole batches), run
    by a second step of its own shape.
    """

    def run_step(chunk, begin, size, totals, local):
        per_replica = strategy.run(step, args=(*chunk, begin, size))
        totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        local += tf.add_n([r[2] for r in strategy.experimental_local_results(per_replica)])
        return totals, local

    def run_chunk(iterator, totals, local):
        chunk = next(iterator)
        rows = tf.shape(strategy.experimental_local_results(chunk[1])[0])[0]
        full = rows // per_replica_batch

        def full_step(i, totals, local):
            return (i + 1, *run_step(chunk, i * per_replica_batch, per_replica_batch, totals, local))

        totals, local = tf.while_loop(lambda i, *_: i < full, full_step, (tf.constant(0), totals, local))[1:]
        if partial_batch:
            begin = full * per_replica_batch
            totals, local = tf.cond(
                begin < rows,
                lambda: run_step(chunk, begin, rows - begin, totals, local),
                lambda: (totals, local),
            )
        return totals, local

    # Explicit loops: autograph's source conversion would only add tracing time to the first epoch.
    @tf.function(autograph=False)
    def run_epoch(iterator, chunks):
        def body(c, totals, local):
            return (c + 1, *run_chunk(iterator, totals, local))

        start = (tf.constant(0), tf.zeros([3]), tf.constant(0.0))
        return tf.while_loop(lambda c, *_: c < chunks, body, start)[1:]

    return run_epoch


def fingerprint(*parts):
    """A 48-bit integer of ``Examples`` (every example's bytes, streamed) and JSON-able values: equal parts,
    equal numbers; different parts differ but for a 2^-48 chance."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, data.Examples):
            for images, labels in part.blocks.as_numpy_iterator():
                digest.update(np.ascontiguousarray(images).tobytes())
                digest.update(np.ascontiguousarray(labels).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return int(digest.hexdigest()[:12], 16)


def _check_workers_agree(strategy, train_examples, start, model, optimizer, settings):
    """Every worker of a cluster trains the same steps on the same data from the same epoch, or all stop
    saying why: a worker that went its own way would leave the others waiting in a collective."""
    # The optimizer's config but its name, which Keras numbers per process (adam, adam_1, ...).
    optimizer_config = {k: v for k, v in optimizer.get_config().items() if k != "name"}
    steps_settings = [model.name, type(optimizer).__name__, optimizer_config, *settings]
    agree_across_workers(strategy, [
        ("the training data's fingerprint", fingerprint(train_examples),
         "give every worker the same --source, --seed and data files"),
        ("the epoch to resume after", start,
         "give every worker one --workdir that all of them reach (a shared folder or a bucket)"),
        ("the training settings' fingerprint", fingerprint(steps_settings), "give every worker the same flags"),
    ])  # fmt: skip


def train(model, optimizer, train_examples, validation_examples, epochs, batch_size, seed, strategy,
          shuffle_buffer=None, workdir=None, verbose=True, after_epoch=None, augment=False,
          evaluate=None):  # fmt: skip
    """Train ``model`` for ``epochs`` on ``train_examples`` (``data.Examples``) through the tf.data pipeline;
    return (Keras-style history dict, this worker's shard figures).

    Each epoch is ``data.training_data`` for every input pipeline of ``strategy``
    (``distribute_datasets_from_function``), shuffled through ``shuffle_buffer`` examples (None: the whole
    split), its images flipped and shifted with ``augment``. With ``workdir``, a run killed at any point and
    started again resumes after its last completed epoch and ends with the same weights as an uninterrupted
    run. ``after_epoch(epoch)`` is called once each epoch's checkpoint is written. ``evaluate``: the caller's
    ``make_evaluator(model)``, so that its graph, traced here, serves the caller's evaluations too.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {replicas} replicas")
    with strategy.scope():
        # Eagerly, in the strategy's scope: variables created inside a replicated tf.function break it.
        optimizer.build(model.trainable_variables)
    partial_batch = replicas == 1 and train_examples.count % batch_size > 0
    run_epoch = _epoch_fn(strategy, _step_fn(model, optimizer, replicas), batch_size // replicas, partial_batch)
    evaluate = evaluate or make_evaluator(model)
    validation_batches = data.evaluation_data(validation_examples, cache=True)
    shard = {"input_pipeline": 0, "input_pipelines": 1, "examples": 0}

    def epochs_data(first):
        def dataset_fn(context):
            shard.update(input_pipeline=context.input_pipeline_id, input_pipelines=context.num_input_pipelines)
            epochs_range = range(first, epochs)
            return data.training_data(
                train_examples, batch_size, seed, epochs_range, shuffle_buffer, replicas, context, augment
            )

        return iter(strategy.distribute_datasets_from_function(dataset_fn))

    chief = is_chief(strategy)
    checkpoints = Checkpoints(workdir, model, optimizer, chief) if workdir else None
    start, history = checkpoints.restore() if checkpoints else (0, empty_history())
    if worker_count(strategy) > 1:
        settings = [epochs, batch_size, seed, shuffle_buffer, augment]
        _check_workers_agree(strategy, train_examples, start, model, optimizer, settings)
    if start >= epochs and verbose:
        print(f"Run in {workdir} finished all {start} epochs before: nothing to train")
    elif start and verbose:
        print(f"Resuming from {workdir} after epoch {start}")
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard")) if workdir and chief else None
    steps = -(-train_examples.count // batch_size)
    chunks = tf.constant(data.chunks_per_epoch(train_examples.count, batch_size, replicas, shuffle_buffer))
    iterator = epochs_data(start) if start < epochs else None
    try:
        for epoch in range(start, epochs):
            began = time.perf_counter()
            try:
                totals, local = run_epoch(iterator, chunks)
            except data.READ_ERRORS as e:
                raise train_examples.read_error(e) from e
            loss_sum, correct, count = totals.numpy()
            shard["examples"] += int(local)
            val_loss, val_accuracy = evaluate(validation_examples, validation_batches)
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

    ``datasets`` (dict of train/validation/test Datasets of raw examples or blocks of them, ``data.as_examples``)
    and ``strategy`` replace the defaults, for tests and for callers with their own data or cluster; the
    datasets are streamed through the same pipeline, never held in memory. With ``config.workdir``, the workdir's
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
        splits = data.load_splits(config.seed, config.source, config.raw_dir, config.tfds_dir)
    else:
        splits = {name: data.as_examples(ds, f"the {name} dataset given") for name, ds in datasets.items()}
    # After the data: a first TFDS prepare draws random numbers, which would shift the weight init.
    make_deterministic(config.seed)
    with strategy.scope():
        model = build_model(config.model)
        steps_per_epoch = -(-splits["train"].count // config.batch_size)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.learning_rate_decay, steps_per_epoch)

    refresh_lock = (lambda _: workdir.refresh_lock()) if workdir and chief else None
    evaluate = make_evaluator(model)
    fit_start = time.perf_counter()
    history, shard = train(model, optimizer, splits["train"], splits["validation"], config.epochs, config.batch_size,
                           config.seed, strategy, config.shuffle_buffer, config.workdir, config.verbose,
                           refresh_lock, config.augment, evaluate)  # fmt: skip
    fit_seconds = time.perf_counter() - fit_start
    # The last epoch evaluated these weights on validation already (or, resumed, its checkpoint did).
    val_loss, val_accuracy = history["val_loss"][-1], history["val_accuracy"][-1]
    test_loss, test_accuracy = evaluate(splits["test"])

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
            export.check_finite_weights(model)  # a diverged run is not published
            provenance = export.training_provenance(figures["config"], figures)
            warmup_images = next(splits["test"].blocks.as_numpy_iterator())[0][:WARMUP_EXAMPLES]
            figures["export_path"] = _export(model, config.export_dir, warmup_images, chief, provenance)
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

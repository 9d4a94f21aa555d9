"""The training loop: ``train(model, optimizer, examples, ...) -> history`` and the evaluator. No flags, no export.

The data comes through the tf.data pipeline (``data.training_data``), distributed with
``distribute_datasets_from_function``; one training step (Keras model, Keras optimizer) and one loop serve every
``tf.distribute`` strategy: an epoch is one call of a tf.function that draws chunks of steps from the
iterator and runs each step with ``strategy.run``. Not ``model.fit``: Keras 3's ``fit`` fails under
MultiWorkerMirroredStrategy (the upstream issue: BUILD_NOTES.md), and this loop also dispatches less per step on CPU.
"""

import hashlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from fmnist_tf import data
from fmnist_tf.training.checkpoints import HISTORY_KEYS, Checkpoints, empty_history
from fmnist_tf.training.distribute import agree_across_workers, is_chief, worker_count


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

    ``size`` is a Python int for full batches, so the step's shapes are static (faster on CPU than the same
    ops on an unknown batch dimension; BUILD_NOTES.md), or a tensor for an epoch's final partial batch.
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

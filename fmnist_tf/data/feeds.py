"""Feeds: the one normalization, training batches per epoch for any number of replicas, evaluation batches."""

import tensorflow as tf

from fmnist_tf.data.files import NUM_PIXELS


def normalize(images):
    """uint8 pixels [..., 28, 28] -> float32 in [0, 1], flattened to [..., 784].

    The one definition of preprocessing: the training pipelines and every serving signature call it.
    """
    images = tf.convert_to_tensor(images)
    pixels = tf.cast(images, tf.float32) / 255.0
    return tf.reshape(pixels, tf.concat([tf.shape(images)[:-2], [NUM_PIXELS]], axis=0))


def _normalize_batch(images, labels):
    return normalize(images), labels


def epoch_order(num_examples, seed, epoch):
    """The training order of one epoch: a permutation that is a pure function of (seed, epoch).

    Not a stateful ``shuffle``: a run resumed at epoch k sees exactly the batches an uninterrupted run
    sees at epoch k, and every worker of a cluster computes the same order without talking.
    """
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64), seed=tf.constant([seed, epoch], tf.int64)
    )


def epoch_batches(images, labels, batch_size, seed, epoch, num_slices=1, first_slice=0, local_slices=1):
    """One epoch of normalized training batches for replicas, from in-memory uint8 images, int64 labels.

    ``batch_size`` is the global batch: step s takes examples [s*batch_size, (s+1)*batch_size) of
    ``epoch_order``. Each global batch is cut into ``num_slices`` equal slices, one per replica, and this
    input pipeline yields slices ``first_slice`` .. ``first_slice + local_slices - 1`` of each step in
    turn (its local replicas): all replicas together take exactly the single-machine steps. A final
    partial global batch is dropped, since replicas need equal, statically shaped slices.
    """
    num_examples = int(labels.shape[0])
    if batch_size % num_slices:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {num_slices} replicas")
    full_steps, slice_size = num_examples // batch_size, batch_size // num_slices
    order = epoch_order(num_examples, seed, epoch)[: full_steps * batch_size]
    # [step, replica, example] -> this pipeline's replicas' slices, in step order.
    index = tf.reshape(order, [full_steps, num_slices, slice_size])[:, first_slice : first_slice + local_slices]
    return (
        tf.data.Dataset.from_tensor_slices(tf.reshape(index, [-1, slice_size]))
        .map(lambda i: (normalize(tf.gather(images, i)), tf.gather(labels, i)))
        .prefetch(tf.data.AUTOTUNE)
    )


def epoch_index_batches(num_examples, batch_size, seed, epoch):
    """``epoch_order`` cut into steps for one replica: [int64 [steps, batch_size]], then the final partial
    batch as one more [1, rest] when the batch size does not divide the examples (as Keras keeps it)."""
    order = epoch_order(num_examples, seed, epoch)
    full = num_examples // batch_size * batch_size
    parts = [(order[:full], [-1, batch_size]), (order[full:], [1, -1])]
    return [tf.reshape(index, shape) for index, shape in parts if index.shape[0]]


def epoch_tensors(images, labels, batch_size, seed, epoch):
    """``epoch_batches`` for one replica as whole tensors: [(x [steps, b, 784], y [steps, b])] for each
    ``epoch_index_batches`` part."""
    return [
        (normalize(tf.gather(images, index)), tf.gather(labels, index))
        for index in epoch_index_batches(int(labels.shape[0]), batch_size, seed, epoch)
    ]


def evaluation_pipeline(ds, batch_size):
    """batch -> normalize -> cache -> prefetch, in order, no shuffle (the TFDS guide's eval pipeline)."""
    return (
        ds.batch(batch_size)
        .map(_normalize_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )



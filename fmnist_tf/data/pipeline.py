"""The tf.data input pipelines: the one normalization, training data per epoch for any strategy, evaluation data.

Every pipeline starts from ``Examples``: a Dataset of blocks of examples (uint8 [n, 28, 28], int64 [n]) in a
fixed order, streamed from TFDS's records (decoded once, ``decoded``) or the IDX files. Work is done on blocks,
windows and chunks of examples, never one example at a time: on a small CPU per-element work is what costs.

Training, per epoch (``training_data``):

1. shuffle: blocks go through a seeded shuffle buffer of ``shuffle_buffer`` examples, then each window of that
   many examples is permuted in the graph (``stateless_shuffle``). A buffer as large as the split (the default) is
   one window: a uniform permutation of the whole epoch. Both draws are pure functions of (seed, epoch), so a
   resumed run and every worker of a cluster see the same order without talking;
2. batch: the epoch is cut into chunks of whole global batches (``CHUNK_EXAMPLES``): a chunk is the steps one
   call of the training loop runs in the graph (Keras's ``steps_per_execution`` idea);
3. shard: each input pipeline of a ``tf.distribute`` strategy keeps its replicas' slices of every global batch,
   so N replicas take exactly the single machine's steps;
4. augment (when asked: flips and shifts, ``augmentation``, keyed by seed, epoch, window and chunk) and normalize, in
   parallel, then prefetch (to the device, under a strategy).

Memory is bounded by the shuffle buffer, one chunk per stage and the prefetch, not by the dataset. A buffer of
the whole split (the default) holds the split anyway: it is then cached after the first epoch.
"""

import functools

import tensorflow as tf

from fmnist_tf.data.augmentation import augment as augment_images
from fmnist_tf.data.augmentation import chunk_key
from fmnist_tf.data.files import NUM_PIXELS
from fmnist_tf.data.sources import plain_function

# Examples per chunk handed to the training loop (rounded down to whole global batches): large enough that
# fetching a chunk is rare, small enough that its normalized floats (6 MB) stay in the cache.
CHUNK_EXAMPLES = 2_048
EVALUATION_BATCH = 2_000
# The window seed of window i is (seed, epoch + i * 2**32): window 0 keeps (seed, epoch).
_WINDOW_STRIDE = 2**32


def normalize(images):
    """uint8 pixels [..., 28, 28] -> float32 in [0, 1], flattened to [..., 784].

    The one definition of preprocessing: the training and evaluation pipelines and every serving signature call it.
    """
    images = tf.convert_to_tensor(images)
    pixels = tf.cast(images, tf.float32) / 255.0
    return tf.reshape(pixels, tf.concat([tf.shape(images)[:-2], [NUM_PIXELS]], axis=0))


@plain_function
def _normalize_pair(images, labels):
    return normalize(images), labels


def window_key(seed, epoch, window=0):
    """The stateless random key of one window: every draw for its examples (order, augmentation) comes from it."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) + tf.cast(window, tf.int64) * _WINDOW_STRIDE])


def epoch_order(num_examples, seed, epoch, window=0):
    """The permutation of one window of ``num_examples``: a pure function of (seed, epoch, window)."""
    key = window_key(seed, epoch, window)
    return tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64), seed=key)


def window_size(count, batch_size, shuffle_buffer=None):
    """Examples per shuffle window: ``shuffle_buffer`` (None: all ``count``) in whole global batches, so that
    batches never straddle two windows."""
    window = count if not shuffle_buffer else min(shuffle_buffer, count)
    return count if window == count else max(batch_size, window // batch_size * batch_size)


def shuffled(examples, seed, epoch, window, whole_split=None):
    """``examples`` of one epoch as windows of ``window`` examples (the last: the rest), each permuted by
    ``epoch_order``: (images, labels, the window's ``window_key``).

    With a window smaller than the split, blocks first pass through a seeded ``shuffle`` of as many examples,
    so that a window mixes blocks from all over the split; a window of the whole split is the epoch uniformly
    permuted, taken from ``whole_split`` (the split as one element) when given. ``epoch`` is a tensor only then.
    """
    if window >= examples.count and whole_split is not None:
        windows = whole_split
    else:
        blocks = examples.blocks
        if window < examples.count:
            # tf.data's shuffle takes one seed, a Python integer: (seed, epoch) folded into it.
            blocks = blocks.shuffle(max(1, window // examples.block), seed=(seed * 1_000_003 + epoch) % 2**63)
        windows = blocks.rebatch(window)

    @plain_function
    def permute(index, block):
        images, labels = block
        order = epoch_order(tf.shape(labels, out_type=tf.int64)[0], seed, epoch, index)
        return tf.gather(images, order), tf.gather(labels, order), window_key(seed, epoch, index)

    return windows.enumerate().map(permute)


def chunk_steps(batch_size):
    """Training steps per chunk: ``CHUNK_EXAMPLES`` in whole global batches (at least one)."""
    return max(1, CHUNK_EXAMPLES // batch_size)


def chunks_per_epoch(count, batch_size, replicas=1, shuffle_buffer=None):
    """How many chunks ``training_data`` yields per epoch (per local replica)."""
    window = window_size(count, batch_size, shuffle_buffer)
    rows = [window] * (count // window) + ([count % window] if count % window else [])
    if replicas > 1:
        rows = [r // batch_size * batch_size for r in rows]
    chunk = chunk_steps(batch_size) * batch_size
    return sum(-(-r // chunk) for r in rows)


def training_data(examples, batch_size, seed, epochs, shuffle_buffer=None, replicas=1, context=None, augment=False):
    """Training data of ``epochs`` (a range) for one input pipeline: (float32 [n, 784], int64 [n]) chunks of
    steps, ``chunks_per_epoch`` of them per epoch, epoch after epoch.

    ``augment``: each chunk's images are flipped and shifted (``augmentation.augment``) before they are normalized,
    keyed by (seed, epoch, window, chunk): the same bits for a seed, other draws every epoch. Under several
    replicas the whole chunk is augmented before it is cut, so N replicas train on one machine's examples.

    ``batch_size`` is the global batch. With one replica a chunk is ``n`` consecutive examples of the epoch's
    order, step s of it taking rows [s*b, (s+1)*b), and an epoch's final partial batch is kept, as Keras keeps
    it. With ``replicas`` (> 1) each global batch is cut into equal slices, one per replica; the pipeline of
    ``context`` (a ``tf.distribute.InputContext``, default: the only one) yields, for each chunk, one element
    per local replica holding that replica's slices of the chunk's steps, one after the other. An epoch's
    final partial global batch is dropped then, since replicas need equal slices.

    The next window is prepared while the current one trains, across epochs too: one iterator serves a run.
    """
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {replicas} replicas")
    if not len(epochs):
        raise ValueError(f"no epoch to train in {epochs}")
    window = window_size(examples.count, batch_size, shuffle_buffer)
    chunk = chunk_steps(batch_size) * batch_size
    # A buffer of the whole split holds it in memory anyway: kept after the first pass (tf.data's cache, the
    # TFDS guide's step) rather than read again every epoch. A smaller buffer streams every epoch from the source.
    if window >= examples.count:
        whole_split = examples.blocks.rebatch(window).cache()
        epoch_windows = plain_function(lambda epoch: shuffled(examples, seed, epoch, window, whole_split))
        windows = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_windows)
    else:
        # One Dataset per epoch: the block shuffle's seed must be a Python integer.
        windows = functools.reduce(
            tf.data.Dataset.concatenate, [shuffled(examples, seed, epoch, window) for epoch in epochs]
        )
    windows = windows.prefetch(1)

    def chunks(images, labels, key):
        batches = tf.data.Dataset.from_tensors((images, labels)).rebatch(chunk)
        if not augment:
            return batches

        @plain_function
        def augmented(index, batch):
            return augment_images(batch[0], chunk_key(key, index)), batch[1]

        return batches.enumerate().map(augmented, num_parallel_calls=tf.data.AUTOTUNE)

    if replicas > 1:
        chunks = _replica_chunks(chunks, batch_size, replicas, context)

    @plain_function
    def normalized_chunks(images, labels, key):
        # Inside the flat_map: placed after a flat_map of rebatches, a parallel map makes TF's graph rewrites
        # log an error line on stderr under op determinism (a NodeDef attribute mismatch), the data unchanged.
        return chunks(images, labels, key).map(_normalize_pair, num_parallel_calls=tf.data.AUTOTUNE)

    return windows.flat_map(normalized_chunks).prefetch(tf.data.AUTOTUNE)


def _replica_chunks(chunks, batch_size, replicas, context):
    """``chunks`` (a function of a window) cut for the local replicas of ``context``'s input pipeline."""
    pipelines, pipeline_id = (context.num_input_pipelines, context.input_pipeline_id) if context else (1, 0)
    local, per_replica = replicas // pipelines, batch_size // replicas

    @plain_function
    def whole_batches(images, labels):
        rows = tf.shape(labels)[0] // batch_size * batch_size
        return images[:rows], labels[:rows]

    @plain_function
    def local_slices(images, labels):
        # [rows] -> [steps, replica, per_replica] -> this pipeline's replicas, each its slices in step order.
        def cut(t):
            t = tf.reshape(t, tf.concat([[-1, replicas, per_replica], tf.shape(t)[1:]], 0))
            t = t[:, pipeline_id * local : (pipeline_id + 1) * local]
            t = tf.transpose(t, tf.concat([[1, 0, 2], tf.range(3, tf.rank(t))], 0))
            return tf.reshape(t, tf.concat([[local, -1], tf.shape(t)[3:]], 0))

        return cut(images), cut(labels)

    def cut_chunks(images, labels, key):
        return (
            chunks(images, labels, key)
            .map(whole_batches)
            .filter(plain_function(lambda images, labels: tf.size(labels) > 0))
            .map(local_slices)
            .unbatch()
        )

    return cut_chunks


def evaluation_data(examples, batch_size=EVALUATION_BATCH, cache=False):
    """``examples`` in order, in normalized batches: (float32 [b, 784], int64 [b]), prefetched.

    ``cache`` keeps the uint8 batches in memory after the first full pass (TFDS's evaluation pipeline:
    batch, cache, prefetch), for data read every epoch: the validation split, a fifth of the training records.
    """
    batches = examples.blocks.rebatch(batch_size)
    if cache:
        batches = batches.cache()
    return batches.map(_normalize_pair, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

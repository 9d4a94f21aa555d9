"""Training-time augmentation of uint8 images: random horizontal flips and shifts, a whole chunk at a time.

Every draw is a stateless random op keyed by the caller (``training_data`` keys each chunk by seed, epoch, window
and chunk index), so a seed gives the same bits on every run, a resumed run the same steps, and each epoch other
draws. Applied to the uint8 pixels before ``normalize``: the one preprocessing stays the only one that serving
and evaluation see.
"""

import tensorflow as tf

# Shifts of up to this many pixels each way, rows and columns apart: the garments are centred in 28x28 with a
# margin of about two pixels, so a larger shift would cut into them.
MAX_SHIFT = 2


def augment(images, key, max_shift=MAX_SHIFT):
    """uint8 images [n, h, w] flipped left-right with probability 1/2 and shifted by up to ``max_shift`` pixels
    on each axis (uniformly, the uncovered border filled with 0, the background), each example its own draws.

    ``key``: an int64 [2] stateless seed; the same key gives the same images.
    """
    images = tf.convert_to_tensor(images)
    count, height, width = tf.unstack(tf.shape(images))
    flip_key, shift_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    flips = tf.random.stateless_uniform([count], flip_key) < 0.5
    images = tf.where(flips[:, None, None], tf.reverse(images, [2]), images)
    # A shift is a crop of the zero-padded image at a per-example offset: gather its rows, then its columns.
    offsets = tf.random.stateless_uniform([count, 2], shift_key, minval=0, maxval=2 * max_shift + 1, dtype=tf.int32)
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift]])
    rows = offsets[:, :1] + tf.range(height)[None]
    columns = offsets[:, 1:] + tf.range(width)[None]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    shifted = tf.gather(cropped, columns, axis=2, batch_dims=1)
    return tf.ensure_shape(shifted, images.shape)


def chunk_key(window_key, chunk_index):
    """The stateless key of chunk ``chunk_index`` of the window keyed ``window_key``: a stream apart from the
    window's own permutation."""
    return tf.random.experimental.stateless_fold_in(window_key, tf.cast(chunk_index, tf.int64))
